#!/usr/bin/python
"""Ansible module: wait until an FM9G replica answers real requests, or say at once why it will not."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_replica_ready
short_description: Wait for an FM9G replica to serve, failing fast when its process is gone
description:
  - Ready means a real answer; C(/v1/models) lists C(served_model_name) and a 1-token completion
    succeeds. The key is read from C(api_key_file) on the host.
  - Stops waiting within seconds when the replica's process is gone - the unit inactive or failed,
    the container exited, or its supervisor reporting a crash, a restart pause or a crash loop
    (the spec's C(state_file)) - and returns its last journal (or container log) lines as C(log_tail).
  - Changes nothing; in check mode it returns at once.
options:
  spec:
    description: The replica's spec (fm9g_deploy/replica_spec.py), as the host has it - its index,
      port, unit, served model name and supervisor state file.
    type: dict
    required: true
  host:
    description: The host's name, for the message.
    type: str
    default: ""
  timeout:
    description: Seconds to wait in all.
    type: int
    default: 900
  max_restarts:
    description: Give up once systemd restarted the unit (the supervisor itself) this many times while waiting.
    type: int
    default: 1
  api_key_file:
    description: The root-only file holding VLLM_API_KEY.
    type: path
    required: true
  log_lines:
    description: Lines of the journal or container log returned when the replica is not ready.
    type: int
    default: 20
  container:
    description: The replica is this container (container serving mode), not the systemd unit;
      its state and restart count come from the engine, its last lines from its log.
    type: str
    default: ""
  docker:
    description: The Docker CLI (container mode).
    type: str
    default: docker
  node_grace:
    description: Seconds a node's supervisor may not answer before the head's wait fails.
    type: int
    default: 60
author: fm9g-deploy
"""

import json
import time
import urllib.request

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fm9g_replicas import (
    api_key, one_token, read_json_object, served_models, unit_properties,
)

POLL_S = 3


def log_tail(module, unit, lines):
    if module.params["container"]:
        _, out, err = module.run_command([module.params["docker"], "logs", "--tail", str(lines),
                                          module.params["container"]])
        return [line for line in (out + err).splitlines() if line.strip()][-lines:]
    _, out, _ = module.run_command(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u",
                                    unit])
    return [line for line in out.splitlines() if line.strip()]


def process_state(module, unit):
    """(state, restarts): 'running', 'starting', or why the process is gone; restarts by systemd/Docker."""
    params = module.params
    if not params["container"]:
        properties = unit_properties(module.run_command, unit)
        active, sub = properties.get("ActiveState", ""), properties.get("SubState", "")
        restarts = int(properties.get("NRestarts") or 0)
        if active in ("failed", "inactive", "deactivating"):
            return "the unit is %s (%s)" % (active, sub or "?"), restarts
        if sub == "auto-restart":
            return "starting", restarts
        return ("running" if active == "active" else "starting"), restarts
    rc, out, _ = module.run_command([params["docker"], "container", "inspect", "--format",
                                     "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}", params["container"]])
    if rc != 0:
        return "the container does not exist", 0
    status, restarts, code = (out.split() + ["", "0", "0"])[:3]
    if status in ("exited", "dead"):
        return "the container %s (exit %s)" % (status, code), int(restarts)
    if status == "restarting":
        return "the container is restarting (exit %s)" % code, int(restarts)
    return ("running" if status == "running" else "starting"), int(restarts)


def engine_problem(state, crashes_at_start):
    """Why the supervised engine is not coming up, or None while it may still."""
    crashes = state.get("crashes") or []
    if state.get("state") == "failed":
        return "marked failed: %s" % (state.get("last_cause") or "crash loop")
    if len(crashes) > crashes_at_start or state.get("state") == "restarting":
        return "its engine died: %s" % (state.get("last_cause") or "unknown cause")
    return None


def node_status(url, timeout=5):
    """(a node supervisor's /status, None) or (None, why not); never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            data = json.loads(response.read().decode("utf-8"))
    except Exception as exc:  # refused, timed out, not JSON: the node cannot be read
        return None, str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    return (data, None) if isinstance(data, dict) else (None, "not a status object")


class NodeWatch:
    """The head's wait: the other nodes of its replica over hosts, as their supervisors say."""

    def __init__(self, node, grace, fetch=node_status, clock=time.monotonic):
        self.hosts = node["hosts"]
        self.urls = node["status_urls"][1:]
        self.grace, self.fetch, self.clock = grace, fetch, clock
        self.silent_since = {}
        self.last = {}

    def problem(self):
        """Why the replica cannot form (a node gave up, or is silent past the grace), else None."""
        now = self.clock()
        for rank, url in enumerate(self.urls, start=1):
            status, why = self.fetch(url)
            self.last[rank] = status or {"state": "unreachable (%s)" % why}
            if status is None:
                since = self.silent_since.setdefault(rank, now)
                if now - since >= self.grace:
                    return "node rank %d (%s) did not join: its supervisor does not answer %s for %ds: %s" % (
                        rank, self.hosts[rank], url, now - since, why)
                continue
            self.silent_since.pop(rank, None)
            if status.get("state") == "failed":
                return "node rank %d (%s) did not join: it gave up: %s" % (
                    rank, self.hosts[rank], status.get("last_cause") or "crash loop")
        return None

    def not_joined(self, generation):
        """The nodes not in the head's engine ``generation``, with their state, as one clause."""
        waiting = ["%s (node rank %d) %s" % (self.hosts[rank], rank, status.get("state"))
                   for rank, status in sorted(self.last.items())
                   if not generation or status.get("joined") != generation]
        return ("; not joined: " + ", ".join(waiting)) if waiting else ""


def main():
    module = AnsibleModule(
        argument_spec={
            "spec": {"type": "dict", "required": True},
            "host": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 900},
            "max_restarts": {"type": "int", "default": 1},
            "api_key_file": {"type": "path", "required": True},
            "log_lines": {"type": "int", "default": 20},
            "container": {"type": "str", "default": ""},
            "docker": {"type": "str", "default": "docker"},
            "node_grace": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    params = module.params
    if module.check_mode:
        module.exit_json(changed=False, ready=None)
    spec = params["spec"]
    index, port, unit, served = int(spec["index"]), int(spec["port"]), spec["unit"], spec["served_model_name"]
    key = api_key(params["api_key_file"])
    started = time.monotonic()
    _, restarts_at_start = process_state(module, unit)
    crashes_at_start = len(read_json_object(spec["state_file"]).get("crashes") or [])
    problem, gone = "no answer yet", False
    node = spec.get("node") or {}
    nodes = NodeWatch(node, params["node_grace"]) if node and int(node["rank"]) == 0 else None
    while time.monotonic() - started < params["timeout"]:
        state, restarts = process_state(module, unit)
        supervised = read_json_object(spec["state_file"])
        gone_because = None
        if state not in ("running", "starting"):
            gone_because = state
        elif restarts - restarts_at_start >= params["max_restarts"]:
            gone_because = "its process was restarted %d times" % (restarts - restarts_at_start)
        gone_because = engine_problem(supervised, crashes_at_start) or gone_because
        if nodes and not gone_because:
            gone_because = nodes.problem()
        if gone_because:
            if supervised.get("last_cause") and supervised["last_cause"] not in gone_because:
                gone_because += "; last cause: %s" % supervised["last_cause"]
            problem, gone = gone_because, True
            break
        models, problem = served_models(port, key, 10)
        if served in models:
            problem = one_token(port, key, served, 60)
            if problem is None:
                module.exit_json(changed=False, ready=True, waited_s=round(time.monotonic() - started, 1))
        elif models:
            problem = "serves %s, not %s" % (", ".join(models), served)
        time.sleep(POLL_S)
    if nodes and not gone:
        problem += nodes.not_joined(read_json_object(spec["state_file"]).get("generation"))
    where = "%sreplica %d (port %d)" % (params["host"] + " " if params["host"] else "", index, port)
    waited = round(time.monotonic() - started)
    message = ("%s is down after %ds: %s" % (where, waited, problem) if gone
               else "%s is not ready after %ds: %s" % (where, waited, problem))
    module.fail_json(msg=message, ready=False, log_tail=log_tail(module, unit, params["log_lines"]))


if __name__ == "__main__":
    main()
