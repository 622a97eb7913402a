"""serve_mode container: the container the role runs for a replica spec, rendered here without a
host; the image's entry point starts exactly the spec's command, as systemd starts a unit's."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest

from fm9g_deploy.image.render import CONTEXT_SOURCE
from fm9g_deploy.replica_spec import expand
from tests.conftest import PROJECT_ROOT
from tests.unit.role_render import replica_spec
from tests.unit.role_render import role_value as _role_value

GPU_REPLICA = {"index": 1, "port": 8101, "tensor_parallel_size": 2, "gpus": [2, 3],
               "gpu_memory_utilization": 0.85, "max_model_len": 4096}
RELEASE = "/opt/fm9g/models/fm9g-4b/releases/abc/9G4B"


def _load_module_utils():
    spec = importlib.util.spec_from_file_location("fm9g_container", PROJECT_ROOT / "module_utils" / "fm9g_container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


container = _load_module_utils()


def replica_container(profile="cuda130", serving="{serve_mode: container}", **overrides):
    """The container the role runs for GPU_REPLICA's spec on host gpu1 (fm9g_container_replica's input)."""
    spec = replica_spec(profile, serving, GPU_REPLICA)
    values = {"_fm9g_replica_spec": spec, "fm9g_replica_container_image": "fm9g-vllm:x",
              "_fm9g_replica_model_stat": {"stat": {"lnk_source": RELEASE}}, **overrides}
    return _role_value("{{ _fm9g_replica_container }}", **values)


def run_argv(replica):
    return container.run_argv(replica["docker"], replica["name"], replica["index"], replica["owner"],
                              replica["environment"], replica["gpus"], replica["network"], replica["mounts"],
                              replica["restart"], replica["stop_timeout"])


def test_gpu_replica_runs_with_its_gpus_host_ipc_loopback_and_a_restart_policy():
    argv = run_argv(replica_container())
    pairs = list(zip(argv, argv[1:]))
    assert argv[:3] == ["docker", "run", "--detach"]
    # docker parses --gpus as CSV: a list of devices must stay one quoted field
    assert ("--gpus", '"device=2,3"') in pairs
    assert ("--ipc", "host") in pairs and ("--network", "host") in pairs
    assert ("--restart", "on-failure") in pairs
    assert ("--env", "FM9G_PORT=8101") in pairs and ("--env", "VLLM_HOST_IP=127.0.0.1") in pairs
    assert not [a for a in argv if a.startswith("CUDA_VISIBLE_DEVICES")]  # --gpus numbers them from 0
    assert ("--mount", f"type=bind,source={RELEASE},target=/model,readonly") in pairs
    assert ("--mount", "type=bind,source=/etc/fm9g/container-api-key,target=/run/secrets/fm9g_api_key,readonly") in pairs
    assert ("--mount", "type=bind,source=/var/lib/fm9g/containers/replica-1,target=/var/lib/fm9g/state") in pairs
    assert not [a for a in argv if "VLLM_API_KEY" in a or a.startswith("-p") or a == "--publish"]


def test_cpu_replica_gets_no_gpus_and_the_kv_cache_setting():
    replica = replica_container("cpu", "{serve_mode: container, cpu_kvcache_space_gib: 3}")
    argv = run_argv(replica)
    assert "--gpus" not in argv and replica["gpus"] == []  # planned GPUs, but a CPU profile uses none
    assert "VLLM_CPU_KVCACHE_SPACE=3" in argv and "--enforce-eager" in replica["command"]


def test_a_host_that_is_a_container_gets_replicas_in_its_namespaces():
    values = {"fm9g_replica_container_host_container": "sb-host1",
              "_fm9g_replica_host_root": {"stdout": "/var/lib/docker/overlay2/x/merged\n"}}
    replica = replica_container(**values)
    assert replica["network"] == "container:sb-host1"
    assert replica["name"] == "sb-host1-fm9g-replica-1" and replica["owner"] == "sb-host1"
    assert replica["mounts"][0][0] == "/var/lib/docker/overlay2/x/merged" + RELEASE
    # a plain host: its own network, its own paths, named after itself
    plain = replica_container()
    assert (plain["network"], plain["name"], plain["owner"]) == ("host", "fm9g-replica-1", "gpu1")
    assert plain["mounts"][0][0] == RELEASE


def test_the_container_starts_exactly_the_specs_command():
    """The image's entry point, given the spec's command, runs what systemd runs for the unit."""
    replica = replica_container(fm9g_replica_probed_dtype="float32")
    result = subprocess.run(["bash", str(CONTEXT_SOURCE / "entrypoint.sh"), "--print-argv", "--", *replica["command"]],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ["PATH"], "FM9G_PYTHON": "/unused", **replica["environment"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expand(replica["command"], {"FM9G_DTYPE": "float32"})
    assert "float32" in result.stdout.splitlines()


def test_fingerprint_follows_options_command_image_id_and_revision():
    replica = replica_container()
    argv, command = run_argv(replica), replica["command"]
    base = container.fingerprint(argv, command, "sha256:a", "env:1 model:2:key")
    assert base == container.fingerprint(list(argv), list(command), "sha256:a", "env:1 model:2:key")
    assert base != container.fingerprint(argv, command, "sha256:b", "env:1 model:2:key"), "a rebuilt image must roll"
    assert base != container.fingerprint(argv, command, "sha256:a", "env:1 model:3:key"), "a new model must roll"
    other = replica_container(serving="{serve_mode: container, served_model_name: other}")
    assert base != container.fingerprint(argv, other["command"], "sha256:a", "env:1 model:2:key")
    full = container.full_argv(argv, base, "fm9g-vllm:x", command)
    assert full[full.index("fm9g-vllm:x") + 1:] == ["--", *command] and f"io.fm9g.fingerprint={base}" in full


@pytest.mark.parametrize("environment,source,message", [
    ({"VLLM_API_KEY": "x"}, "/m", "never passed as VLLM_API_KEY"),
    ({}, "/models/a,b", "may not contain a comma"),
])
def test_unsafe_settings_are_refused(environment, source, message):
    with pytest.raises(ValueError, match=message):
        container.run_argv("docker", "n", 0, "h", environment, [], "host", [(source, "/model", True)])


def test_sandbox_hosts_with_the_engine_socket_name_themselves_to_the_role(tmp_path):
    from fm9g_deploy.sandbox.hosts import SandboxHost
    from fm9g_deploy.sandbox.inventory import inventory_data

    hosts = [SandboxHost("sb-host1", 1, "running", 2201, 8021, "10.0.0.2", engine_socket=True),
             SandboxHost("sb-host2", 2, "running", 2202, 8022, "10.0.0.3")]
    data = inventory_data(hosts, tmp_path / "key", "http://sb-mirror:8080")["all"]["children"]["serving"]["hosts"]
    assert data["host1"]["fm9g_replica_container_host_container"] == "sb-host1"
    assert "fm9g_replica_container_host_container" not in data["host2"]


def test_docker_start_time_gives_the_container_replicas_uptime():
    spec = importlib.util.spec_from_file_location("fm9g_replicas", PROJECT_ROOT / "module_utils" / "fm9g_replicas.py")
    replicas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replicas)
    import time

    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 90)) + ".123456789Z"
    assert 89 <= replicas._seconds_since(started) <= 91
    assert replicas._seconds_since("0001-01-01T00:00:00Z") > 10**10  # Docker's "never started"
    assert replicas._seconds_since("") is None


def test_the_fingerprint_stands_for_the_key_without_letting_anyone_test_guesses(tmp_path):
    """A container's labels are readable by every engine user: its key enters the fingerprint as an
    HMAC under a root-only random salt, never as a plain hash."""
    import hashlib

    key, salt = tmp_path / "key", tmp_path / "salt"
    key.write_text("the-key\n")
    assert container.key_digest(key, salt, create=False) == ""  # check mode makes no salt
    assert not salt.exists()
    first = container.key_digest(key, salt)
    assert salt.stat().st_mode & 0o777 == 0o600
    assert first == container.key_digest(key, salt)  # stable while key and salt are
    assert first not in (hashlib.sha256(b"the-key\n").hexdigest()[:32], hashlib.sha1(b"the-key\n").hexdigest())
    key.write_text("another-key\n")
    assert container.key_digest(key, salt) != first  # a new key rolls the replica
    assert container.key_digest(tmp_path / "missing", salt) == ""
    replica = replica_container()
    assert "the-key" not in str(replica) and replica["key_file"] == "/etc/fm9g/container-api-key"
