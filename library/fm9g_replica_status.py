#!/usr/bin/python
"""Ansible module: report each FM9G replica on a host (unit state, readiness by a real request)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_replica_status
short_description: Report the FM9G replicas on a host
description:
  - Reads the replicas' specs as deployed in C(config_dir) (C(replica-N.json)), asks systemd for each unit's
    state (Docker for each container's, in container mode), and asks each replica on loopback for C(/v1/models) with the key from C(api-key.env),
    which the module reads on the host, so the key never travels through Ansible.
  - Adds what each replica's supervisor knows (engine restarts, the last crash's cause, a crash loop)
    and the dtype it runs in, with the engine probe's reason where that is a fallback.
  - Reads each replica's serving metrics from vLLM's C(/metrics) on loopback (Prometheus text, no key) twice,
    C(metrics_interval) seconds apart for the whole host, and reports per replica C(metrics) (requests running
    and waiting, KV-cache usage as a fraction, generation and prompt tokens per second), or C(metrics_problem)
    where C(/metrics) cannot be read; and the replica's spec as deployed (C(spec)).
  - Changes nothing; supports check mode.
options:
  config_dir:
    description: Directory of the replicas' specs (C(replica-N.json)) and environments (C(replica-N.env)).
    type: path
    required: true
  api_key_file:
    description: The root-only file holding VLLM_API_KEY.
    type: path
    required: true
  timeout:
    description: Seconds to wait for each replica's answer.
    type: float
    default: 5
  container_cli:
    description: The Docker CLI, in container mode.
    type: str
    default: docker
  container_prefix:
    description: Prefix of the replica containers' names (the host's own container name and a dash, in the sandbox).
    type: str
    default: ""
  engine_probe_cache:
    description: The engine probe's answer, per serving mode (why a replica runs in a fallback dtype).
    type: dict
    required: true
  metrics_interval:
    description:
      - Seconds between the two reads of every replica's C(/metrics), once for the whole host; the token rates
        are the counters' growth over it. C(0) reads once and reports no rates.
    type: float
    default: 1.0
author: fm9g-deploy
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_replicas import (
    api_key, container_properties, deployed_specs, read_env_file, read_json_object, replica_metrics, served_models,
    unit_properties, uptime_seconds,
)


def replica_status(module, spec, key):
    p = module.params
    index, port, mode = int(spec["index"]), int(spec["port"]), spec.get("serve_mode", "systemd")
    environment = read_env_file(os.path.join(p["config_dir"], "replica-%d.env" % index)) \
        if os.path.exists(os.path.join(p["config_dir"], "replica-%d.env" % index)) else {}
    if mode == "container":
        name = p["container_prefix"] + spec["container"]
        unit = container_properties(module.run_command, p["container_cli"], name)
        uptime = unit["uptime_s"]
    else:
        name = spec["unit"]
        unit = unit_properties(module.run_command, name)
        uptime = uptime_seconds(unit)
    supervised = read_json_object(spec["state_file"])
    node = spec.get("node") or None
    if node and int(node["rank"]) > 0:
        # A headless node of a replica over hosts serves no API: it is ready when its head serves
        # with it (its supervisor says so); its head's host answers the requests.
        models, problem = [], None
        if supervised.get("state") != "serving":
            problem = "node rank %s of the replica headed by %s: %s" % (
                node["rank"], node["head"], supervised.get("state", "no state yet"))
    else:
        models, problem = served_models(port, key, p["timeout"])
    probe = read_json_object(p["engine_probe_cache"].get(mode, "")).get("result") or {}
    engine_restarts = int(supervised.get("restarts") or 0)
    if supervised.get("state") == "failed":
        problem = "marked failed: %s" % supervised.get("last_cause")
    return {
        "index": index,
        "unit": name,
        "port": port,
        "tensor_parallel_size": int(spec["tensor_parallel_size"]),
        "gpus": ",".join(str(gpu) for gpu in spec.get("gpus") or []),
        "max_model_len": int(spec["max_model_len"]),
        "active_state": unit.get("ActiveState", "unknown"),
        "sub_state": unit.get("SubState", "unknown"),
        "enabled": unit.get("UnitFileState", "unknown"),
        "restarts": int(unit.get("NRestarts") or 0) + engine_restarts,
        "engine_state": supervised.get("state", "unknown"),
        "last_cause": supervised.get("last_cause"),
        "crashes_recent": len(supervised.get("crashes") or []),
        "dtype": environment.get("FM9G_DTYPE", ""),
        "dtype_note": probe.get("reason", "") if probe.get("fell_back") else "",
        "main_pid": int(unit.get("MainPID") or 0),
        "uptime_s": uptime,
        "models": models,
        "ready": bool(models) or (bool(node) and int(node["rank"]) > 0 and supervised.get("state") == "serving"),
        "node": {"rank": int(node["rank"]), "hosts": node["hosts"]} if node else None,
        "problem": problem,
        "spec": spec,
    }


def main():
    module = AnsibleModule(
        argument_spec={"config_dir": {"type": "path", "required": True},
                       "api_key_file": {"type": "path", "required": True},
                       "timeout": {"type": "float", "default": 5.0},
                       "container_cli": {"type": "str", "default": "docker"},
                       "container_prefix": {"type": "str", "default": ""},
                       "engine_probe_cache": {"type": "dict", "required": True},
                       "metrics_interval": {"type": "float", "default": 1.0}},
        supports_check_mode=True,
    )
    p = module.params
    if p["metrics_interval"] < 0:
        module.fail_json(msg="metrics_interval %s: must be 0 (one read, no rates) or more seconds" % p["metrics_interval"])
    key = api_key(p["api_key_file"])
    specs = deployed_specs(p["config_dir"])
    headless = [spec for spec in specs if spec.get("node") and int(spec["node"]["rank"]) > 0]
    metrics = replica_metrics({int(spec["index"]): int(spec["port"]) for spec in specs if spec not in headless},
                              p["metrics_interval"], p["timeout"])
    metrics.update({int(spec["index"]): {"metrics": {}, "metrics_problem": "a headless node: its head serves the metrics"}
                    for spec in headless})
    replicas = [dict(replica_status(module, spec, key), **metrics[int(spec["index"])]) for spec in specs]
    module.exit_json(changed=False, replicas=replicas)


if __name__ == "__main__":
    main()
