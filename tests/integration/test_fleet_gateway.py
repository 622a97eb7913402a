"""The usual GPU topology, rehearsed: one replica per host, and the fleet gateway (the `gateway`
group, the sandbox's gw1) in front of the hosts' gateways. A host whose only replica dies, is
rolled or is stopped is routed around, so clients of the fleet gateway see no failed request.

These tests redeploy the shared sandbox with one replica per host, so they run last (conftest).
"""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import TEST_CONFIG, parse_changed
from tests.integration.load import SteadyLoad
from tests.integration.test_resilience import replica_pids, replica_serves, wait_until

KEY = "fm9g"
ONE_PER_HOST = TEST_CONFIG.replace("replicas_per_host: 2", "replicas_per_host: 1")


def _mirror(inventory) -> str:
    return yaml.safe_load(inventory.read_text())["all"]["vars"]["fm9g_mirror_url"]


def _fleet_upstream(gateway_host, backend: str) -> str:
    text = gateway_host.file("/etc/nginx/fm9g/upstream.conf").content_string
    return next((line for line in text.splitlines() if f" {backend} " in line), "")


@pytest.fixture(scope="module")
def fleet(deployed_sandbox, test_config):
    """(inventory, fleet gateway URL, testinfra host of gw1), after a deploy of one replica per host."""
    import testinfra

    inventory, _ = deployed_sandbox
    test_config.write_text(ONE_PER_HOST.format(mirror_url=_mirror(inventory)))
    result = run_cli("deploy", "-i", str(inventory), timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = yaml.safe_load(inventory.read_text())["all"]["children"]
    url = data["gateway"]["hosts"]["gw1"]["fm9g_sandbox_gateway_url"]
    yield inventory, url, testinfra.get_host("ansible://gw1", ansible_inventory=str(inventory))
    test_config.write_text(TEST_CONFIG.format(mirror_url=_mirror(inventory)))


def test_fleet_gateway_balances_over_every_host(fleet, sandbox_hosts):
    inventory, url, gateway = fleet
    for name in ("host1", "host2"):
        assert not sandbox_hosts[name].service("fm9g-replica@1").is_running, "one replica per host"
        address = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"][name][
            "fm9g_serving_address"]
        assert _fleet_upstream(gateway, f"{address}:8020"), gateway.file("/etc/nginx/fm9g/upstream.conf").content_string
    marks = {name: int(host.run("wc -l < /var/log/nginx/fm9g-access.log").stdout or 0)
             for name, host in sandbox_hosts.items()}
    for _ in range(12):
        response = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": "9g", "prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert response.status_code == 200, response.text
    time.sleep(7)  # the hosts' access logs are buffered (flush=5s)
    for name, host in sandbox_hosts.items():
        assert int(host.run("wc -l < /var/log/nginx/fm9g-access.log").stdout) > marks[name], f"{name} got nothing"
    assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401


def test_a_hosts_only_engine_killed_under_load_loses_no_request_through_the_fleet_gateway(fleet, sandbox_hosts):
    inventory, url, gateway = fleet
    host = sandbox_hosts["host1"]
    address = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"]["host1"][
        "fm9g_serving_address"]
    before = replica_pids(host, 0)
    with SteadyLoad(url, KEY, workers=3, max_seconds=240) as load:
        time.sleep(3)
        with host.sudo():
            assert host.run(f"kill -9 {before['engine']}").rc == 0
        assert wait_until(lambda: "down" in _fleet_upstream(gateway, f"{address}:8020"), 30, every=1), \
            "the fleet gateway kept a host with no live replica in rotation"
        back = wait_until(lambda: replica_serves(host, 8100), 240)
        rejoined = wait_until(lambda: "down" not in _fleet_upstream(gateway, f"{address}:8020"), 30, every=1)
        time.sleep(2)
    assert back and rejoined
    assert load.report.failures == [], load.report.failures[:5]
    assert load.report.ok >= 20, load.report


def test_rolling_update_of_one_replica_hosts_loses_no_request_through_the_fleet_gateway(fleet, sandbox_hosts,
                                                                                        test_config):
    inventory, url, _ = fleet
    before = {name: replica_pids(host, 0)["supervisor"] for name, host in sandbox_hosts.items()}
    test_config.write_text(ONE_PER_HOST.replace("cpu_kvcache_space_gib: 1", "cpu_kvcache_space_gib: 2")
                           .format(mirror_url=_mirror(inventory)))
    with SteadyLoad(url, KEY, workers=2, max_seconds=900) as load:
        time.sleep(2)
        result = run_cli("deploy", "-i", str(inventory), timeout=900)
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert all(count > 0 for name, count in parse_changed(result.stdout).items() if name != "gw1")
    after = {name: replica_pids(host, 0)["supervisor"] for name, host in sandbox_hosts.items()}
    assert all(after[name] != before[name] for name in before), "every host's replica restarted"
    assert load.report.failures == [], load.report.failures[:5]
    assert load.report.ok >= 20, load.report


def test_stop_of_a_hosts_only_replica_loses_no_request_through_the_fleet_gateway(fleet, sandbox_hosts):
    inventory, url, _ = fleet
    with SteadyLoad(url, KEY, workers=2, max_seconds=300) as load:
        time.sleep(2)
        stop = run_cli("stop", "-i", str(inventory), "--limit", "host2", timeout=600)
        time.sleep(4)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    assert not sandbox_hosts["host2"].service("fm9g-replica@0").is_running
    assert load.report.failures == [], load.report.failures[:5]
    deploy = run_cli("deploy", "-i", str(inventory), "--limit", "host2", timeout=900)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    assert sandbox_hosts["host2"].service("fm9g-replica@0").is_running


def test_a_plan_of_one_replica_refuses_a_restart_unless_downtime_is_accepted(fleet, sandbox_hosts, tmp_path,
                                                                             test_config):
    """An inventory of host1 alone plans one replica in all: restarting it would leave clients with
    none, so deploy refuses, says how to proceed, and the replica keeps serving as it was."""
    inventory, _, _ = fleet
    host = sandbox_hosts["host1"]
    data = yaml.safe_load(inventory.read_text())
    del data["all"]["children"]["serving"]["hosts"]["host2"]
    del data["all"]["children"]["gateway"]
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(data))
    (tmp_path / "fm9g.yml").write_text(test_config.read_text().replace("cpu_kvcache_space_gib: 2",
                                                                       "cpu_kvcache_space_gib: 3"))
    before = replica_pids(host, 0)["supervisor"]
    result = run_cli("deploy", "-i", str(tmp_path / "hosts.yml"), timeout=600)
    assert result.returncode == 1
    assert "only replica" in result.stderr and "--accept-downtime" in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("fm9g-deploy: failed")
    assert replica_pids(host, 0)["supervisor"] == before and replica_serves(host, 8100)
    assert "--accept-downtime" in run_cli("deploy", "--help").stdout
    # the fleet's own inventory puts host1's settings back without restarting it
    again = run_cli("deploy", "-i", str(inventory), "--limit", "host1", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert replica_pids(host, 0)["supervisor"] == before
