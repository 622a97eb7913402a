#!/usr/bin/python
"""Ansible module: one FM9G replica as a container (query it, (re)create it, or remove it)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_container_replica
short_description: Run an FM9G vLLM replica as a container of the serving image
description:
  - Runs a replica spec (fm9g_deploy/replica_spec.py) as a container - its environment, its GPUs,
    its mounts, and its command line given to the image's entry point.
  - C(state=query) reports whether the replica container runs with exactly the wanted settings
    (its fingerprint label holds the docker run argv, the command, the image id and C(revision)). Changes nothing.
  - C(state=started) removes a container whose fingerprint differs (after a graceful stop) and
    runs a new one; a matching running container is left alone.
  - C(state=absent) stops (SIGTERM, then C(stop_timeout)) and removes it.
  - C(state=stopped) stops it and keeps it (its logs stay). A later C(started) replaces it.
  - The API key is a read-only mounted file, never an environment variable.
options:
  state: {type: str, choices: [query, started, stopped, absent], default: started, description: What to do.}
  replica:
    type: dict
    required: true
    description: The replica's container, as the role builds it once from the spec (fm9g_replica's vars).
    suboptions:
      docker: {type: str, default: docker, description: The Docker CLI.}
      name: {type: str, required: true, description: Container name.}
      index: {type: int, required: true, description: Replica index.}
      owner: {type: str, required: true, description: Label value naming the host that owns the replica.}
      image: {type: str, default: "", description: Serving image reference (needed unless stopped or absent).}
      image_id: {type: str, default: "", description: The image's id, part of the fingerprint.}
      environment: {type: dict, default: {}, description: The spec's environment (with the host's dtype).}
      command: {type: list, elements: str, default: [], description: The spec's command line.}
      gpus: {type: list, elements: int, default: [], description: GPU indexes (--gpus); none on CPU hosts.}
      network: {type: str, default: host, description: "host, or container:NAME where the host is a container."}
      mounts: {type: list, elements: list, default: [], description: "(source on the engine's filesystem, target, read-only) of each mount."}
      restart: {type: str, default: on-failure, description: Restart policy.}
      stop_timeout: {type: int, default: 60, description: Seconds vLLM gets to finish requests on stop.}
      revision: {type: str, default: "", description: "Also part of the fingerprint: the lock, the model release and its mapping."}
      key_file: {type: path, default: "", description: "The key file on the host; a salted HMAC of it is part of the fingerprint, so a new key rolls the replica."}
      salt_file: {type: path, default: "", description: "Root-only file holding the HMAC's random salt (made on first use)."}
author: fm9g-deploy
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_container import FINGERPRINT_LABEL, fingerprint, full_argv, key_digest, run_argv


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
        "index": {"type": "int", "required": True},
        "owner": {"type": "str", "required": True},
        "image": {"type": "str", "default": ""},
        "image_id": {"type": "str", "default": ""},
        "environment": {"type": "dict", "default": {}},
        "command": {"type": "list", "elements": "str", "default": []},
        "gpus": {"type": "list", "elements": "int", "default": []},
        "network": {"type": "str", "default": "host"},
        "mounts": {"type": "list", "elements": "list", "default": []},
        "restart": {"type": "str", "default": "on-failure"},
        "stop_timeout": {"type": "int", "default": 60},
        "revision": {"type": "str", "default": ""},
        "key_file": {"type": "path", "default": ""},
        "salt_file": {"type": "path", "default": ""},
    }
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["query", "started", "stopped", "absent"], "default": "started"},
            "replica": {"type": "dict", "required": True, "options": replica_options},
        },
        supports_check_mode=True,
    )
    p = module.params["replica"]
    state = module.params["state"]
    if state in ("started", "query") and not (p["image"] and p["command"] and p["mounts"]):
        module.fail_json(msg="state %s needs image, command and mounts" % state)
    current = inspect(module, p["docker"], p["name"])
    if state == "absent":
        if current is not None and not module.check_mode:
            remove(module, p["docker"], p["name"], p["stop_timeout"])
        module.exit_json(changed=current is not None)
    if state == "stopped":
        running = bool(current and current["running"])
        if running and not module.check_mode:
            rc, _, err = module.run_command([p["docker"], "stop", "--time", str(p["stop_timeout"]), p["name"]])
            if rc != 0:
                module.fail_json(msg="stopping %s failed: %s" % (p["name"], err.strip()[-300:]))
        module.exit_json(changed=running)
    try:
        argv = run_argv(p["docker"], p["name"], p["index"], p["owner"], p["environment"], p["gpus"], p["network"],
                        [(str(source), str(target), _truthy(readonly)) for source, target, readonly in p["mounts"]],
                        p["restart"], p["stop_timeout"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    key = key_digest(p["key_file"], p["salt_file"], create=not module.check_mode) if p["key_file"] else ""
    wanted = fingerprint(argv, p["command"], p["image_id"], p["revision"] + ":" + key)
    up_to_date = current is not None and current["running"] and current["fingerprint"] == wanted
    result = {"fingerprint": wanted, "up_to_date": up_to_date, "exists": current is not None,
              "running": bool(current and current["running"]),
              "argv": full_argv(argv, wanted, p["image"], p["command"])}
    if state == "query" or up_to_date:
        module.exit_json(changed=False, **result)
    if not module.check_mode:
        if current is not None:
            remove(module, p["docker"], p["name"], p["stop_timeout"])
        rc, out, err = module.run_command(result["argv"])
        if rc != 0:
            module.fail_json(msg="starting %s failed: %s" % (p["name"], err.strip()[-400:]), **result)
        result["container_id"] = out.strip()
    module.exit_json(changed=True, **result)


def _truthy(value):
    return value if isinstance(value, bool) else str(value).lower() in ("true", "yes", "1")


if __name__ == "__main__":
    main()
