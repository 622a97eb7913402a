#!/usr/bin/python
"""Ansible module: one FM9G replica as a container (query it, (re)create it, or remove it)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_container_replica
short_description: Run an FM9G vLLM replica as a container of the serving image
description:
  - C(state=query) reports whether the replica container runs with exactly the wanted settings
    (its fingerprint label holds the docker run argv, the image id and C(revision)). Changes nothing.
  - C(state=started) removes a container whose fingerprint differs (after a graceful stop) and
    runs a new one; a matching running container is left alone.
  - C(state=absent) stops (SIGTERM, then C(stop_timeout)) and removes it.
  - C(state=stopped) stops it and keeps it (its logs stay; with restart policy C(unless-stopped) it
    stays stopped across engine restarts). A later C(started) replaces it.
  - The API key is a read-only mounted file (C(key_source)), never an environment variable.
options:
  state: {type: str, choices: [query, started, stopped, absent], default: started, description: What to do.}
  spec: {type: dict, description: "The replica's options below as one dict (the role builds it once); given, the separate ones are ignored."}
  docker: {type: str, default: docker, description: The Docker CLI.}
  name: {type: str, description: Container name (required).}
  image: {type: str, description: Serving image reference (required unless absent).}
  image_id: {type: str, default: "", description: The image's id, part of the fingerprint.}
  index: {type: int, description: Replica index (required).}
  owner: {type: str, description: Label value naming the host that owns the replica (required).}
  settings: {type: dict, default: {}, description: FM9G_* variables of the replica.}
  gpus: {type: list, elements: int, default: [], description: GPU indexes (--gpus); none on CPU hosts.}
  network: {type: str, default: host, description: "host, or container:NAME where the host is a container."}
  model_source: {type: path, description: Model directory on the engine's filesystem (mounted read-only).}
  key_source: {type: path, description: Key file on the engine's filesystem (mounted read-only).}
  restart: {type: str, default: on-failure, description: Restart policy.}
  state_source: {type: path, description: "Directory on the engine's filesystem for the supervisor's state (mounted read-write)."}
  stop_timeout: {type: int, default: 60, description: Seconds vLLM gets to finish requests on stop.}
  revision: {type: str, default: "", description: "Also part of the fingerprint: the lock, the model release, the key file's checksum."}
author: fm9g-deploy
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_container import FINGERPRINT_LABEL, fingerprint, full_argv, run_argv


def inspect(module, docker, name):
    rc, out, _ = module.run_command([docker, "container", "inspect", name])
    if rc != 0:
        return None
    data = json.loads(out)[0]
    return {"running": data["State"].get("Running", False), "status": data["State"].get("Status"),
            "restarts": data.get("RestartCount", 0),
            "fingerprint": (data["Config"].get("Labels") or {}).get(FINGERPRINT_LABEL, "")}


def remove(module, docker, name, stop_timeout):
    module.run_command([docker, "stop", "--time", str(stop_timeout), name])
    rc, _, err = module.run_command([docker, "rm", "--force", name])
    if rc != 0 and "No such container" not in err:
        module.fail_json(msg="removing %s failed: %s" % (name, err.strip()[-300:]))


def main():
    replica_options = {
        "docker": {"type": "str", "default": "docker"},
        "name": {"type": "str", "required": True},
        "image": {"type": "str"},
        "image_id": {"type": "str", "default": ""},
        "index": {"type": "int", "required": True},
        "owner": {"type": "str", "required": True},
        "settings": {"type": "dict", "default": {}},
        "gpus": {"type": "list", "elements": "int", "default": []},
        "network": {"type": "str", "default": "host"},
        "model_source": {"type": "path"},
        "key_source": {"type": "path"},
        "restart": {"type": "str", "default": "on-failure"},
        "state_source": {"type": "path"},
        "stop_timeout": {"type": "int", "default": 60},
        "revision": {"type": "str", "default": ""},
    }
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["query", "started", "stopped", "absent"], "default": "started"},
            # The whole replica as one dict (the role builds it once), or its keys one by one.
            "spec": {"type": "dict", "options": replica_options},
            **{key: dict(option, required=False) for key, option in replica_options.items()},
        },
        required_one_of=[("spec", "name")],
        supports_check_mode=True,
    )
    p = dict(module.params["spec"] or module.params, state=module.params["state"])
    if p["index"] is None or p["owner"] is None:
        module.fail_json(msg="index and owner are required")
    if p["state"] in ("started", "query") and not (p["image"] and p["model_source"] and p["key_source"]):
        module.fail_json(msg="state %s needs image, model_source and key_source" % p["state"])
    current = inspect(module, p["docker"], p["name"])
    if p["state"] == "absent":
        if current is not None and not module.check_mode:
            remove(module, p["docker"], p["name"], p["stop_timeout"])
        module.exit_json(changed=current is not None)
    if p["state"] == "stopped":
        running = bool(current and current["running"])
        if running and not module.check_mode:
            rc, _, err = module.run_command([p["docker"], "stop", "--time", str(p["stop_timeout"]), p["name"]])
            if rc != 0:
                module.fail_json(msg="stopping %s failed: %s" % (p["name"], err.strip()[-300:]))
        module.exit_json(changed=running)
    try:
        argv = run_argv(p["docker"], p["name"], p["image"], p["index"], p["owner"], p["settings"], p["gpus"],
                        p["network"], p["model_source"], p["key_source"], p["restart"], p["stop_timeout"],
                        p["state_source"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    wanted = fingerprint(argv, p["image_id"], p["revision"])
    up_to_date = current is not None and current["running"] and current["fingerprint"] == wanted
    result = {"fingerprint": wanted, "up_to_date": up_to_date, "exists": current is not None,
              "running": bool(current and current["running"]), "argv": full_argv(argv, wanted, p["image"])}
    if p["state"] == "query" or up_to_date:
        module.exit_json(changed=False, **result)
    if not module.check_mode:
        if current is not None:
            remove(module, p["docker"], p["name"], p["stop_timeout"])
        rc, out, err = module.run_command(result["argv"])
        if rc != 0:
            module.fail_json(msg="starting %s failed: %s" % (p["name"], err.strip()[-400:]), **result)
        result["container_id"] = out.strip()
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
