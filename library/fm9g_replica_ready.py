#!/usr/bin/python
"""Ansible module: wait until an FM9G replica answers real requests, or say why it will not."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_replica_ready
short_description: Wait for an FM9G replica to serve, failing fast when its unit crash-loops
description:
  - Ready means a real answer; C(/v1/models) lists C(served_model_name) and a 1-token completion
    succeeds. The key is read from C(config_dir)/api-key.env on the host.
  - Stops waiting early when the unit has failed or systemd restarted it C(max_restarts) times,
    and returns the unit's last journal lines either way it fails.
  - Changes nothing; in check mode it returns at once.
options:
  index:
    description: Replica index (unit fm9g-replica@INDEX).
    type: int
    required: true
  port:
    description: Loopback port of the replica.
    type: int
    required: true
  served_model_name:
    description: Model name the replica must list.
    type: str
    required: true
  timeout:
    description: Seconds to wait in all.
    type: int
    default: 900
  max_restarts:
    description: Give up once systemd restarted the unit this many times while waiting.
    type: int
    default: 2
  config_dir:
    description: Directory of the key file.
    type: path
    default: /etc/fm9g
  container:
    description: The replica is this container (container serving mode), not the systemd unit;
      its state and restart count come from the engine, its last lines from its log.
    type: str
    default: ""
  docker:
    description: The Docker CLI (container mode).
    type: str
    default: docker
author: fm9g-deploy
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_replicas import UNIT, api_key, one_token, served_models, unit_properties


def journal(module, index, lines=25):
    if module.params["container"]:
        _, out, err = module.run_command([module.params["docker"], "logs", "--tail", str(lines),
                                          module.params["container"]])
        return [line for line in (out + err).splitlines() if line.strip()]
    _, out, _ = module.run_command(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u",
                                    UNIT.format(index=index)])
    return [line for line in out.splitlines() if line.strip()]


def replica_state(module, index):
    """{ActiveState, NRestarts} of the unit, or the same read from the replica's container."""
    if not module.params["container"]:
        return unit_properties(module.run_command, index)
    rc, out, _ = module.run_command([module.params["docker"], "container", "inspect", "--format",
                                     "{{.State.Status}} {{.RestartCount}}", module.params["container"]])
    if rc != 0:
        return {"ActiveState": "failed", "NRestarts": "0"}
    status, restarts = (out.split() + ["", "0"])[:2]
    return {"ActiveState": "failed" if status in ("exited", "dead") else "active", "NRestarts": restarts}


def main():
    module = AnsibleModule(
        argument_spec={
            "index": {"type": "int", "required": True},
            "port": {"type": "int", "required": True},
            "served_model_name": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 900},
            "max_restarts": {"type": "int", "default": 2},
            "config_dir": {"type": "path", "default": "/etc/fm9g"},
            "container": {"type": "str", "default": ""},
            "docker": {"type": "str", "default": "docker"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if module.check_mode:
        module.exit_json(changed=False, ready=None)
    key = api_key(params["config_dir"])
    started = time.monotonic()
    restarts_at_start = int(replica_state(module, params["index"]).get("NRestarts") or 0)
    problem = "no answer yet"
    while time.monotonic() - started < params["timeout"]:
        unit = replica_state(module, params["index"])
        restarts = int(unit.get("NRestarts") or 0) - restarts_at_start
        if unit.get("ActiveState") == "failed" or restarts >= params["max_restarts"]:
            problem = "the %s %s (restarted %d times while waiting)" % (
                "container" if params["container"] else "unit",
                "failed" if unit.get("ActiveState") == "failed" else "keeps crashing", restarts)
            break
        models, problem = served_models(params["port"], key, 10)
        if params["served_model_name"] in models:
            problem = one_token(params["port"], key, params["served_model_name"], 60)
            if problem is None:
                module.exit_json(changed=False, ready=True, waited_s=round(time.monotonic() - started, 1))
        elif models:
            problem = "serves %s, not %s" % (", ".join(models), params["served_model_name"])
        time.sleep(3)
    module.fail_json(
        msg="replica %d (port %d) is not ready after %ds: %s" % (
            params["index"], params["port"], round(time.monotonic() - started), problem),
        ready=False, journal=journal(module, params["index"]),
    )


if __name__ == "__main__":
    main()
