"""serve_mode container: the role's per-replica settings and the `docker run` argv it runs, rendered
here without a host; the replica starts with the systemd unit's exact launch line."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest

from fm9g_deploy.image.render import CONTEXT_SOURCE
from tests.conftest import PROJECT_ROOT
from tests.unit.role_render import role_value as _role_value
from tests.unit.test_image_entrypoint import supervised, systemd_argv

GPU_REPLICA = {"index": 1, "port": 8101, "tensor_parallel_size": 2, "gpus": [2, 3],
               "gpu_memory_utilization": 0.85, "max_model_len": 4096}


def _load_module_utils():
    spec = importlib.util.spec_from_file_location("fm9g_container", PROJECT_ROOT / "module_utils" / "fm9g_container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


container = _load_module_utils()


def role_value(expression: str, **overrides):
    """``expression`` as the role renders it for GPU_REPLICA on host gpu1."""
    return _role_value(expression, **{"_fm9g_serve_replica": GPU_REPLICA, **overrides})


def gpu_argv(**overrides):
    settings = role_value("{{ _fm9g_serve_container_settings }}", fm9g_serve_accelerator="cuda", **overrides)
    return container.run_argv("docker", "fm9g-replica-1", "fm9g-vllm:x", 1, "gpu1", settings, GPU_REPLICA["gpus"],
                              "host", "/opt/fm9g/models/fm9g-4b/releases/abc/9G4B", "/etc/fm9g/container-api-key")


def test_gpu_replica_runs_with_its_gpus_host_ipc_loopback_and_a_restart_policy():
    argv = gpu_argv()
    pairs = list(zip(argv, argv[1:]))
    assert argv[:3] == ["docker", "run", "--detach"]
    # docker parses --gpus as CSV: a list of devices must stay one quoted field
    assert ("--gpus", '"device=2,3"') in pairs
    assert ("--ipc", "host") in pairs and ("--network", "host") in pairs
    assert ("--restart", "on-failure") in pairs
    assert ("--env", "FM9G_HOST=127.0.0.1") in pairs
    assert ("--env", "FM9G_PORT=8101") in pairs
    assert ("--mount", "type=bind,source=/opt/fm9g/models/fm9g-4b/releases/abc/9G4B,target=/model,readonly") in pairs
    assert ("--mount", "type=bind,source=/etc/fm9g/container-api-key,target=/run/secrets/fm9g_api_key,readonly") in pairs
    assert not [a for a in argv if "VLLM_API_KEY" in a or a.startswith("-p") or a == "--publish"]


def test_cpu_replica_gets_no_gpus_and_the_kv_cache_setting():
    settings = role_value("{{ _fm9g_serve_container_settings }}", fm9g_serve_accelerator="cpu",
                          fm9g_serve_cpu_kvcache_space_gib=3, fm9g_serve_extra_args=["--enforce-eager"])
    argv = container.run_argv("docker", "n", "i", 0, "h", settings, [], "host", "/m", "/k")
    assert "--gpus" not in argv
    assert "VLLM_CPU_KVCACHE_SPACE=3" in argv and "FM9G_EXTRA_ARGS=--enforce-eager" in argv


def test_a_host_that_is_a_container_gets_replicas_in_its_namespaces():
    values = {"fm9g_serve_container_host_container": "sb-host1",
              "_fm9g_serve_host_root": {"stdout": "/var/lib/docker/overlay2/x/merged\n"}}
    assert role_value("{{ _fm9g_serve_container_network }}", **values) == "container:sb-host1"
    assert role_value("{{ _fm9g_serve_container_prefix }}", **values) == "sb-host1-"
    assert role_value("{{ _fm9g_serve_container_owner }}", **values) == "sb-host1"
    assert role_value("{{ _fm9g_serve_container_root }}", **values) == "/var/lib/docker/overlay2/x/merged"
    # a plain host: its own network, its own paths, named after itself
    assert role_value("{{ _fm9g_serve_container_network }}") == "host"
    assert role_value("{{ _fm9g_serve_container_root }}") == ""
    assert role_value("{{ _fm9g_serve_container_owner }}") == "gpu1"


def test_the_container_starts_the_systemd_units_exact_command():
    """The settings the role gives the container, through the image's entry point, give the unit's argv."""
    settings = role_value("{{ _fm9g_serve_container_settings }}", fm9g_serve_accelerator="cuda")
    python = "/opt/fm9g/envs/fm-9g/bin/python"
    result = subprocess.run(["bash", str(CONTEXT_SOURCE / "entrypoint.sh"), "--print-argv"], capture_output=True,
                            text=True, timeout=30,
                            env={"PATH": os.environ["PATH"], "FM9G_PYTHON": python, "FM9G_MODEL_DIR": "/model",
                                 **settings})
    expected, _ = systemd_argv(fm9g_serve_python=python, fm9g_serve_model_dir="/model",
                               fm9g_serve_accelerator="cuda", _fm9g_serve_replica=GPU_REPLICA)
    unit_supervisor, unit_vllm = supervised(expected)
    image_supervisor, image_vllm = supervised(result.stdout.splitlines())
    assert image_vllm == unit_vllm
    for option in ("--port", "--crash-limit", "--crash-window", "--stop-timeout"):
        assert image_supervisor[option] == unit_supervisor[option]


def test_fingerprint_follows_argv_image_id_and_revision():
    argv = gpu_argv()
    base = container.fingerprint(argv, "sha256:a", "env:1 model:2:key")
    assert base == container.fingerprint(list(argv), "sha256:a", "env:1 model:2:key")
    assert base != container.fingerprint(argv, "sha256:b", "env:1 model:2:key"), "a rebuilt image must roll"
    assert base != container.fingerprint(argv, "sha256:a", "env:1 model:3:key"), "a new model release must roll"
    assert base != container.fingerprint(gpu_argv(fm9g_serve_served_model_name="other"), "sha256:a", "env:1 model:2:key")
    full = container.full_argv(argv, base, "fm9g-vllm:x")
    assert full[-1] == "fm9g-vllm:x" and f"io.fm9g.fingerprint={base}" in full


@pytest.mark.parametrize("settings,source,message", [
    ({"VLLM_API_KEY": "x"}, "/m", "never passed as VLLM_API_KEY"),
    ({}, "/models/a,b", "may not contain a comma"),
])
def test_unsafe_settings_are_refused(settings, source, message):
    with pytest.raises(ValueError, match=message):
        container.run_argv("docker", "n", "i", 0, "h", settings, [], "host", source, "/k")


def test_sandbox_hosts_with_the_engine_socket_name_themselves_to_the_role(tmp_path):
    from fm9g_deploy.sandbox.hosts import SandboxHost
    from fm9g_deploy.sandbox.inventory import inventory_data

    hosts = [SandboxHost("sb-host1", 1, "running", 2201, 8021, "10.0.0.2", engine_socket=True),
             SandboxHost("sb-host2", 2, "running", 2202, 8022, "10.0.0.3")]
    data = inventory_data(hosts, tmp_path / "key", "http://sb-mirror:8080")["all"]["children"]["serving"]["hosts"]
    assert data["host1"]["fm9g_serve_container_host_container"] == "sb-host1"
    assert "fm9g_serve_container_host_container" not in data["host2"]


def test_docker_start_time_gives_the_container_replicas_uptime():
    spec = importlib.util.spec_from_file_location("fm9g_replicas", PROJECT_ROOT / "module_utils" / "fm9g_replicas.py")
    replicas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replicas)
    import time

    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 90)) + ".123456789Z"
    assert 89 <= replicas._seconds_since(started) <= 91
    assert replicas._seconds_since("0001-01-01T00:00:00Z") > 10**10  # Docker's "never started"
    assert replicas._seconds_since("") is None
