"""The service: replica units enabled, running, restarted by systemd, on loopback only; the key's file
root-only and holding the deployment's key; the key on no process's command line."""

from __future__ import annotations

import hmac
import json
import re

import pytest

from fm9g_deploy.replica_spec import ReplicaSpec, serves_api
from fm9g_deploy.verify_suite.support import (
    as_root,
    describe_state,
    expect,
    fail,
    last_line,
    listening_tcp,
    processes,
    replica_process,
    unit_pids,
    unit_property,
)

KEY_VARIABLE = "VLLM_API_KEY"


@pytest.mark.journal("replicas")
def test_replica_unit_is_enabled(host, replica_unit):
    """unit enabled"""
    state = unit_property(host, replica_unit, "UnitFileState")
    expect(state == "enabled", f"{replica_unit} is {state or 'not installed'}, not enabled: it will not start at boot")


@pytest.mark.journal("replicas")
def test_replica_unit_is_running(host, replica_unit):
    """unit running"""
    active, sub = unit_property(host, replica_unit, "ActiveState"), unit_property(host, replica_unit, "SubState")
    expect((active, sub) == ("active", "running"), f"{replica_unit} is {describe_state(active, sub)}")


@pytest.mark.journal("replicas")
def test_replica_runs_its_spec(host, replica, replica_unit, facts):
    """runs its spec"""
    index = replica["index"]
    path = f"{facts.config_dir}/replica-{index}.json"
    deployed = host.file(path)
    expect(deployed.exists, f"{path} is missing: replica {index} was not deployed by this fm9g-deploy; "
           "run `fm9g-deploy deploy`")
    try:
        on_host = json.loads(deployed.content_string)
    except ValueError:
        fail(f"{path} is not JSON; run `fm9g-deploy deploy`")
    changed = sorted(key for key in set(replica) | set(on_host) if replica.get(key) != on_host.get(key))
    expect(not changed, f"replica {index} was deployed with another spec ({', '.join(changed)} differ from "
           "what the config, the profile and the plan give now); run `fm9g-deploy deploy`")
    # The running server's own command line, with the dtype this host runs in (its environment file).
    environment = host.file(f"{facts.config_dir}/replica-{index}.env").content_string
    dtype = re.search(r"(?m)^FM9G_DTYPE=(.*)$", environment)
    wanted = " ".join(ReplicaSpec(**replica).vllm_argv({"FM9G_DTYPE": dtype.group(1) if dtype else ""}))
    pid = replica_process(host, replica)
    running = processes(host, [pid]).get(pid, (None, ""))[1]
    expect(running == wanted, f"replica {index} (pid {pid}) runs `{running[:200]}`, not its spec's `{wanted[:200]}`")


def test_replica_unit_restarts_on_failure(host, replica_unit):
    """Restart= set"""
    restart = unit_property(host, replica_unit, "Restart")
    expect(restart and restart != "no", f"{replica_unit} has Restart={restart or 'no'}: systemd will not restart it")


@pytest.mark.journal("replicas")
def test_replica_listens_on_loopback_only(host, replica, replica_unit):
    """listens on loopback only"""
    port = replica["port"]
    sockets = listening_tcp(host)
    on_port = [s for s in sockets if s.port == port]
    expect(on_port or not serves_api(replica), f"nothing listens on port {port} (replica {replica['index']})")
    pids = unit_pids(host, replica_unit)
    # The replica's own sockets: its API port and vLLM's internal ones (found by cgroup or pid,
    # whichever the host's ss reports).
    owned = [s for s in sockets if s.port == port or s.cgroup.endswith(f"/{replica_unit}") or s.pids & pids]
    # A node of a replica over hosts meets the others on the hosts' network, at its own address there.
    node_address = (replica.get("node") or {}).get("address")
    exposed = [str(s) for s in owned if not s.loopback and not (node_address and s.address == node_address)]
    expect(not exposed, f"replica {replica['index']} listens beyond loopback on {', '.join(sorted(exposed)[:4])}"
           + (f" and {len(exposed) - 4} more" if len(exposed) > 4 else ""))


def test_api_key_file_is_root_only(host, facts):
    """key env file is root:root 0600"""
    path = facts.api_key_file
    with as_root(host):
        env_file = host.file(path)
        expect(env_file.exists, f"{path} is missing; run `fm9g-deploy deploy`")
        owner = (env_file.user, env_file.group, env_file.mode)
    expect(owner == ("root", "root", 0o600),
           f"{path} is {owner[0]}:{owner[1]} {owner[2]:04o}; it must be root:root 0600 (it holds the API key)")


def test_api_key_file_holds_the_deployment_key(host, facts):
    """key env file holds the deployment's key"""
    with as_root(host):
        result = host.run("cat %s", facts.api_key_file)
    if result.rc != 0:
        fail(f"cannot read {facts.api_key_file}: {last_line(result.stderr) or result.rc}")
    values = [line.split("=", 1)[1].strip().strip("'\"") for line in result.stdout.splitlines()
              if line.strip().startswith(f"{KEY_VARIABLE}=")]
    expect(values, f"{facts.api_key_file} does not set {KEY_VARIABLE}")
    # Compared in constant time; the reason never shows either key.
    expect(hmac.compare_digest(values[-1].encode(), facts.api_key.encode()),
           f"{facts.api_key_file} holds another key than the deployment's: replicas that restart will "
           "refuse clients; run `fm9g-deploy deploy`")


def test_api_key_is_on_no_command_line(host, facts):
    """key on no process's command line"""
    table = processes(host)
    expect(table, "could not read the processes' command lines from /proc")
    token = re.compile(rf"(?:^|[\s=]){re.escape(facts.api_key)}(?:\s|$)")
    offenders = [f"pid {pid} ({command.split()[0] if command.split() else '?'})"
                 for pid, (_, command) in sorted(table.items()) if token.search(command)]
    expect(not offenders, f"the API key is on the command line of {', '.join(offenders[:3])}; "
           "pass it through the env file, never as --api-key")
