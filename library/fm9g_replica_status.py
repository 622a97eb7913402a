#!/usr/bin/python
"""Ansible module: report each FM9G replica on a host (unit state, readiness by a real request)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_replica_status
short_description: Report the FM9G replicas on a host
description:
  - Reads the replica settings in C(config_dir) (C(replica-N.env)), asks systemd for each unit's
    state (Docker for each container's, in container mode), and asks each replica on loopback for C(/v1/models) with the key from C(api-key.env),
    which the module reads on the host, so the key never travels through Ansible.
  - Adds what each replica's supervisor knows (engine restarts, the last crash's cause, a crash loop)
    and the dtype it runs in, with the engine probe's reason where that is a fallback.
  - Changes nothing; supports check mode.
options:
  config_dir:
    description: Directory of the replica settings and the key file.
    type: path
    default: /etc/fm9g
  timeout:
    description: Seconds to wait for each replica's answer.
    type: float
    default: 5
  serve_mode:
    description: C(systemd) (a unit per replica) or C(container) (a container per replica).
    type: str
    choices: [systemd, container]
    default: systemd
  container_cli:
    description: The Docker CLI, in container mode.
    type: str
    default: docker
  container_prefix:
    description: Prefix of the replica containers' names (the host's own container name and a dash, in the sandbox).
    type: str
    default: ""
  state_dir:
    description: Where the replica supervisors keep their state (restarts, last cause) and the engine probe its answer.
    type: path
    default: /var/lib/fm9g
author: fm9g-deploy
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_replicas import (
    UNIT, api_key, container_properties, read_env_file, read_json_object, replica_env_paths, replica_index,
    served_models, supervisor_state_path, unit_properties, uptime_seconds,
)
from ansible.module_utils.fm9g_container import container_name


def replica_status(module, path, key):
    p = module.params
    index = replica_index(path)
    settings = read_env_file(path)
    port = int(settings.get("FM9G_PORT", 0))
    if p["serve_mode"] == "container":
        name = container_name(p["container_prefix"], index)
        unit = container_properties(module.run_command, p["container_cli"], name)
        uptime = unit["uptime_s"]
    else:
        name = UNIT.format(index=index)
        unit = unit_properties(module.run_command, index)
        uptime = uptime_seconds(unit)
    models, problem = served_models(port, key, p["timeout"]) if port else ([], "no port")
    supervised = read_json_object(supervisor_state_path(p["state_dir"], p["serve_mode"], index))
    probe_dir = os.path.join(p["state_dir"], "probe") if p["serve_mode"] == "container" else p["state_dir"]
    probe = read_json_object(os.path.join(probe_dir, "engine-probe.json")).get("result") or {}
    engine_restarts = int(supervised.get("restarts") or 0)
    if supervised.get("state") == "failed":
        problem = "marked failed: %s" % supervised.get("last_cause")
    return {
        "index": index,
        "unit": name,
        "port": port,
        "tensor_parallel_size": int(settings.get("FM9G_TENSOR_PARALLEL_SIZE", 1)),
        "gpus": settings.get("CUDA_VISIBLE_DEVICES", ""),
        "max_model_len": int(settings.get("FM9G_MAX_MODEL_LEN", 0)),
        "active_state": unit.get("ActiveState", "unknown"),
        "sub_state": unit.get("SubState", "unknown"),
        "enabled": unit.get("UnitFileState", "unknown"),
        "restarts": int(unit.get("NRestarts") or 0) + engine_restarts,
        "engine_state": supervised.get("state", "unknown"),
        "last_cause": supervised.get("last_cause"),
        "crashes_recent": len(supervised.get("crashes") or []),
        "dtype": settings.get("FM9G_DTYPE", ""),
        "dtype_note": probe.get("reason", "") if probe.get("fell_back") else "",
        "main_pid": int(unit.get("MainPID") or 0),
        "uptime_s": uptime,
        "models": models,
        "ready": bool(models),
        "problem": problem,
    }


def main():
    module = AnsibleModule(
        argument_spec={"config_dir": {"type": "path", "default": "/etc/fm9g"},
                       "timeout": {"type": "float", "default": 5.0},
                       "serve_mode": {"type": "str", "choices": ["systemd", "container"], "default": "systemd"},
                       "container_cli": {"type": "str", "default": "docker"},
                       "container_prefix": {"type": "str", "default": ""},
                       "state_dir": {"type": "path", "default": "/var/lib/fm9g"}},
        supports_check_mode=True,
    )
    config_dir = module.params["config_dir"]
    key = api_key(config_dir)
    replicas = [replica_status(module, path, key) for path in replica_env_paths(config_dir)]
    module.exit_json(changed=False, replicas=replicas)


if __name__ == "__main__":
    main()
