"""Container serving mode: each replica is a running container of the serving image, restarted by
the engine, with its planned GPUs, on the host's loopback only, the model and the key mounted
read-only, the key in neither its config nor its command, and the locked stack inside it.

Skipped on hosts whose replicas are systemd units (serving.serve_mode systemd)."""

from __future__ import annotations

import json
import re

import pytest

from fm9g_deploy.verify_suite.facts import CHECKED_PACKAGES
from fm9g_deploy.verify_suite.support import as_root, expect, fail, last_line, listening_tcp

REPLICA_LABEL = "io.fm9g.replica"
OWNER_LABEL = "io.fm9g.replica-of"
MOUNTS = {"/model": "model", "/run/secrets/fm9g_api_key": "key file"}
_PROBED: dict[tuple[str, int], dict] = {}


def _serve_mode(facts) -> str | None:
    """The deployment's serve mode when the facts carry it; None: decide from the host."""
    return getattr(facts, "serve_mode", None)


@pytest.fixture
def container(host, facts, hostname, replica) -> dict:
    """`docker inspect` of the replica's container (skips the check in systemd mode)."""
    mode = _serve_mode(facts)
    if mode == "systemd":
        pytest.skip("serve_mode systemd: the replicas are units (see the service checks)")
    owner = host.ansible.get_variables().get("fm9g_replica_container_host_container") or hostname
    with as_root(host):
        listing = host.run("docker ps --all --filter label=%s=%s --filter label=%s=%s --format '{{.ID}}'",
                           REPLICA_LABEL, str(replica["index"]), OWNER_LABEL, owner)
        if listing.rc != 0 or not listing.stdout.strip():
            if mode is None:
                pytest.skip("no replica containers on this host: its replicas are systemd units")
            fail(f"replica {replica['index']} has no container on {hostname}"
                 + (f" ({last_line(listing.stderr)})" if listing.rc else "; run `fm9g-deploy deploy`"))
        result = host.run("docker container inspect %s", listing.stdout.split()[0])
    expect(result.rc == 0, f"docker inspect failed: {last_line(result.stderr)}")
    return json.loads(result.stdout)[0]


def _env(container: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container["Config"].get("Env") or [] if "=" in item)


def test_replica_container_is_running(container, replica):
    """container running"""
    state = container["State"]
    expect(state.get("Running") and not state.get("Restarting"),
           f"{container['Name'].lstrip('/')} is {state.get('Status')} (exit code {state.get('ExitCode')}); "
           f"see `docker logs {container['Name'].lstrip('/')}`")


def test_replica_container_restarts_on_failure(container):
    """restart policy set"""
    policy = (container["HostConfig"].get("RestartPolicy") or {}).get("Name") or "no"
    expect(policy != "no", f"{container['Name'].lstrip('/')} has restart policy 'no': the engine will not restart it")


def test_replica_container_runs_as_non_root(container):
    """runs as a non-root user"""
    user = container["Config"].get("User") or "root"
    expect(user.split(":")[0] not in ("", "0", "root"), f"{container['Name'].lstrip('/')} runs as {user}")


def test_replica_container_listens_on_loopback_only(host, container, replica):
    """listens on loopback only"""
    network = container["HostConfig"].get("NetworkMode") or ""
    expect(network == "host" or network.startswith("container:"),
           f"network mode {network!r}: the replica must share the host's network to be on its loopback")
    expect(not container["HostConfig"].get("PortBindings"), "the replica publishes ports beyond loopback")
    command = container.get("Args") or []
    expect("--host" in command and command[command.index("--host") + 1:][:1] == ["127.0.0.1"],
           "vLLM in the container is not told --host 127.0.0.1")
    on_port = [s for s in listening_tcp(host) if s.port == replica["port"]]
    expect(on_port, f"nothing listens on port {replica['port']} (replica {replica['index']})")
    exposed = [str(s) for s in on_port if not s.loopback]
    expect(not exposed, f"port {replica['port']} is open beyond loopback: {', '.join(exposed)}")


def test_replica_container_runs_its_spec(container, replica):
    """runs its spec"""
    name = container["Name"].lstrip("/")
    command = container.get("Args") or []
    expect(command == ["--", *replica["argv"]],
           f"{name} runs another command than replica {replica['index']}'s spec; run `fm9g-deploy deploy`")
    environment = _env(container)
    # FM9G_DTYPE is the host's to set (the engine probe's fallback); the rest is the spec's.
    differ = sorted(key for key, value in replica["environment"].items()
                    if key != "FM9G_DTYPE" and environment.get(key) != value)
    expect(not differ, f"{name}'s environment differs from its spec in {', '.join(differ)}; run `fm9g-deploy deploy`")


def test_replica_container_mounts_model_and_key_read_only(container, facts):
    """model and key mounted read-only"""
    mounts = {m.get("Destination"): m for m in container.get("Mounts") or []}
    for target, what in MOUNTS.items():
        expect(target in mounts, f"the {what} is not mounted at {target}")
        expect(not mounts[target].get("RW", True), f"the {what} at {target} is mounted read-write")
    expect(facts.model_sha256 in mounts["/model"].get("Source", ""),
           f"the model mounted is {mounts['/model'].get('Source')}, not the release of the pinned tarball "
           f"({facts.model_sha256[:12]})")


def test_replica_container_keeps_the_key_out_of_its_config(container, facts):
    """key in neither env, command nor labels"""
    expect("VLLM_API_KEY" not in _env(container), "VLLM_API_KEY is set in the container's environment")
    token = re.compile(rf"(?:^|[\s=\"']){re.escape(facts.api_key)}(?:[\s\"',]|$)")
    shown = json.dumps({k: container["Config"].get(k) for k in ("Env", "Cmd", "Entrypoint", "Labels")})
    expect(not token.search(shown) and not token.search(" ".join(container.get("Args") or [])),
           "the API key shows in `docker inspect` of the replica; it must come from the mounted file only")


def test_replica_container_has_its_planned_gpus(container, host_facts, replica):
    """planned GPUs given"""
    if host_facts.accelerator != "cuda":
        pytest.skip(f"{host_facts.name} serves on the CPU")
    requests = container["HostConfig"].get("DeviceRequests") or []
    devices = sorted(int(d) for r in requests for d in (r.get("DeviceIDs") or []))
    expect(devices == sorted(replica["gpus"]), f"the container gets GPUs {devices}, the plan says {replica['gpus']}")


def _probe(host, container, facts, hostname, index) -> dict:
    key = (hostname, index)
    if key not in _PROBED:
        from fm9g_deploy.verify_suite.test_env import PROBE

        python = _env(container).get("FM9G_PYTHON", "python3")
        prefix = python.rsplit("/bin/", 1)[0]
        wanted = json.dumps({CHECKED_PACKAGES[role]: package.dist for role, package in facts.packages.items()})
        with as_root(host):
            result = host.run("docker exec %s %s -c %s %s", container["Id"], python, PROBE, wanted)
            lock = host.run("docker exec %s cat %s/fm9g-requirements.sha256", container["Id"], prefix)
        lines = [line for line in result.stdout.splitlines() if line.startswith("FM9G-PROBE ")]
        _PROBED[key] = {"report": json.loads(lines[-1].split(" ", 1)[1]) if lines else None,
                        "error": last_line(result.stderr) or f"exit {result.rc}",
                        "lock": lock.stdout.strip() if lock.rc == 0 else None}
    return _PROBED[key]


def test_replica_container_env_holds_the_locked_requirements(host, container, facts, hostname, replica):
    """image env holds the locked requirements"""
    lock = _probe(host, container, facts, hostname, replica["index"])["lock"]
    expect(lock, "the image's env has no fm9g-requirements.sha256: it was not built by `fm9g-deploy image build`")
    expect(lock == facts.lock_sha256, f"the image's env was installed from requirements {lock[:12]}, the lock's "
           f"are {facts.lock_sha256[:12]}; rebuild with `fm9g-deploy image build` and deploy")


def test_replica_container_imports_the_locked_stack(host, container, facts, hostname, replica):
    """image env imports torch / transformers / vLLM at the locked versions"""
    probed = _probe(host, container, facts, hostname, replica["index"])
    if probed["report"] is None:
        fail(f"the image's Python did not run: {probed['error']}")
    packages = probed["report"]["packages"]
    for role, locked in facts.packages.items():
        entry = packages.get(CHECKED_PACKAGES[role]) or {}
        expect(entry.get("version") == locked.version,
               f"{locked.dist} is {entry.get('version') or 'not installed'} in the image, the lock says {locked.version}")
        expect(entry.get("error") is None, f"{role} does not import in the image: {entry.get('error')}")
