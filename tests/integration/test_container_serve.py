"""serve_mode container on a sandbox host: the replica is a container of the CPU serving image beside
the host (sharing its network namespace, on this machine's engine), behind the same gateway,
idempotent, and passing the verify suite's checks.

A sandbox of its own (one host with the engine socket, one replica) so the shared test sandbox
keeps its systemd replicas. Needs the cpu image: built here unless test_image.py built it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import parse_changed

SANDBOX = os.environ.get("FM9G_TEST_CONTAINER_SANDBOX", "fm9g-test-container")
API_KEY = "fm9g-container-test-key"

CONFIG = """\
model:
  name: tiny-random
profile: cpu
serving:
  served_model_name: 9g
  api_key: {key}
  replicas_per_host: 1
  serve_mode: container
mirror:
  url: {mirror_url}
"""


@pytest.fixture(scope="module")
def container_sandbox():
    up = run_cli("sandbox", "up", "--name", SANDBOX, "--hosts", "1", "--engine-socket", timeout=1200)
    assert up.returncode == 0, up.stderr
    inventory = Path(up.stdout.strip().splitlines()[-1])
    data = yaml.safe_load(inventory.read_text())
    (inventory.parent / "fm9g.yml").write_text(CONFIG.format(key=API_KEY, mirror_url=data["all"]["vars"]["fm9g_mirror_url"]))
    yield inventory, data["all"]["children"]["serving"]["hosts"]["host1"]
    if os.environ.get("FM9G_KEEP_SANDBOX") != "1":
        down = run_cli("sandbox", "down", "--name", SANDBOX, timeout=300)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def deployed(container_sandbox):
    inventory, host = container_sandbox
    fetch = run_cli("artifacts", "fetch", "--profile", "cpu", "--model", "tiny-random", timeout=1800)
    assert fetch.returncode == 0, fetch.stderr[-2000:]
    image = run_cli("image", "build", "--profile", "cpu", "--no-smoke-test", timeout=1800)
    assert image.returncode == 0, image.stderr[-3000:]
    # the env lives in the image: provision gives the host only the model
    provision = run_cli("provision", "-i", str(inventory), timeout=900)
    assert provision.returncode == 0, provision.stdout[-2000:] + provision.stderr[-2000:]
    assert "hosts get the model only" in provision.stdout
    deploy = run_cli("deploy", "-i", str(inventory), timeout=1800)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    return inventory, host, image.stdout.strip().splitlines()[-1]


def test_replica_is_a_container_of_the_image_beside_the_host(deployed):
    import docker

    _, host, tag = deployed
    client = docker.from_env()
    replicas = client.containers.list(filters={"label": f"io.fm9g.replica-of={host['fm9g_sandbox_container']}"})
    assert [c.name for c in replicas] == [f"{host['fm9g_sandbox_container']}-fm9g-replica-0"]
    attrs = replicas[0].attrs
    assert attrs["Config"]["Image"] == tag
    assert attrs["HostConfig"]["NetworkMode"].startswith("container:")
    assert attrs["HostConfig"]["IpcMode"] == "host"
    # on-failure: a supervisor that gave up on a crash loop exits 0 and the container stays down
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "on-failure" and attrs["HostConfig"]["Init"] is True
    assert {m["Destination"]: m["RW"] for m in attrs["Mounts"]} == \
        {"/model": False, "/run/secrets/fm9g_api_key": False, "/var/lib/fm9g/state": True}
    assert API_KEY not in str(attrs["Config"]) and API_KEY not in " ".join(attrs["Args"])


def test_provision_gave_the_host_the_model_and_no_env(deployed):
    import docker

    _, host, _ = deployed
    container = docker.from_env().containers.get(host["fm9g_sandbox_container"])
    assert container.exec_run(["test", "-e", "/opt/fm9g/envs"]).exit_code != 0
    assert container.exec_run(["test", "-f", "/opt/fm9g/models/tiny-random/current/config.json"]).exit_code == 0


def test_gateway_serves_the_container_replica(deployed):
    _, host, _ = deployed
    url = host["fm9g_sandbox_gateway_url"]
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["9g"]
    answer = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120,
                        json={"model": "9g", "prompt": "Hello", "max_tokens": 4})
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"]
    assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401


def test_second_deploy_changes_nothing(deployed):
    inventory, _, _ = deployed
    again = run_cli("deploy", "-i", str(inventory), timeout=900)
    assert again.returncode == 0, again.stdout[-2000:]
    assert parse_changed(again.stdout) == {"host1": 0}


def test_verify_passes_with_the_container_checks(deployed):
    inventory, _, _ = deployed
    result = run_cli("verify", "-i", str(inventory), timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "container running" in result.stdout and "FAIL" not in result.stdout
    assert re.search(r"\b\d+ passed, 0 failed", result.stdout)
    # the host's own env and units do not apply (the env is in the image, the replica a container)
    assert "serve_mode container:" in result.stdout


def test_status_reports_the_container_replica(deployed):
    import json

    inventory, host, _ = deployed
    result = run_cli("status", "-i", str(inventory), "--json", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [replica] = json.loads(result.stdout)["host1"]["replicas"]
    assert replica["unit"] == f"{host['fm9g_sandbox_container']}-fm9g-replica-0"
    assert (replica["active_state"], replica["sub_state"], replica["ready"]) == ("active", "running", True)
    assert replica["enabled"] == "restart=on-failure" and replica["uptime_s"] >= 0


def test_engine_killed_in_the_container_comes_back_in_the_same_container(deployed):
    """The image's entry point runs vLLM under the same supervisor as a systemd replica: kill -9 of
    its EngineCore (vLLM's API server then exits 0) brings the engine back inside the container."""
    import json
    import time

    import docker

    inventory, host, _ = deployed
    client = docker.from_env()
    replica = client.containers.get(f"{host['fm9g_sandbox_container']}-fm9g-replica-0")
    host_container = client.containers.get(host["fm9g_sandbox_container"])
    started = replica.attrs["State"]["StartedAt"]
    assert replica.exec_run(["pkill", "-9", "-f", "VLLM::EngineCore"]).exit_code == 0
    url = host["fm9g_sandbox_gateway_url"]

    def answers() -> bool:
        try:
            return httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30,
                              json={"model": "9g", "prompt": "Hi", "max_tokens": 1}).status_code == 200
        except httpx.HTTPError:
            return False

    time.sleep(3)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not answers():
        time.sleep(3)
    assert answers()
    replica.reload()
    assert replica.attrs["State"]["StartedAt"] == started, "the supervisor, not Docker, restarted the engine"
    state = json.loads(host_container.exec_run(
        ["cat", "/var/lib/fm9g/containers/replica-0/replica.state.json"]).output)
    assert state["restarts"] >= 1 and "without being asked to stop" in state["last_cause"], state
    report = json.loads(run_cli("status", "-i", str(inventory), "--json", timeout=300).stdout)
    assert report["host1"]["replicas"][0]["restarts"] >= 1 and report["host1"]["replicas"][0]["last_cause"]


def test_stop_keeps_the_container_stopped_until_deploy(deployed):
    import json

    import docker

    inventory, host, _ = deployed
    name = f"{host['fm9g_sandbox_container']}-fm9g-replica-0"
    stop = run_cli("stop", "-i", str(inventory), timeout=600)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    assert parse_changed(stop.stdout)["host1"] >= 1
    container = docker.from_env().containers.get(name)  # kept, for its logs
    assert container.status == "exited"
    status = run_cli("status", "-i", str(inventory), "--json", timeout=300)
    assert status.returncode == 1
    [replica] = json.loads(status.stdout)["host1"]["replicas"]
    assert (replica["active_state"], replica["ready"]) == ("inactive", False)

    deploy = run_cli("deploy", "-i", str(inventory), timeout=1800)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    assert docker.from_env().containers.get(name).status == "running"
    assert run_cli("status", "-i", str(inventory), timeout=300).returncode == 0
