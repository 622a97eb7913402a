"""Monitoring on the fleet topology (one replica per host, the fleet gateway host gw1 runs
Prometheus): every target scraped through the hosts' metrics doors, the doors open to gw1 only,
the alerting rules loaded and proved with promtool, every dashboard panel's query answered by the
live Prometheus, `status` answering from the live fleet, and a replica killed showing up.

It redeploys the shared sandbox with monitoring on, so it runs with the reshaping modules
(conftest); test_secrets, after it, deploys with monitoring off again (the door is closed).
"""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run_cli
from tests.dashboard_queries import concrete, panel_queries
from tests.integration.conftest import TEST_CONFIG
from tests.integration.test_resilience import replica_pids, replica_serves, wait_until

KEY = "fm9g"
MONITORED = TEST_CONFIG.replace("replicas_per_host: 2", "replicas_per_host: 1") + """\
monitoring:
  enabled: true
  scrape_interval_s: 2
"""
DASHBOARD = PROJECT_ROOT / "roles" / "fm9g_monitoring" / "files" / "fm9g-fleet-dashboard.json"
ALERTS = ("FM9GReplicaDown", "FM9GReplicaRestartLoop", "FM9GKVCacheHigh", "FM9GRequestsQueueing",
          "FM9GTimeToFirstTokenHigh")


def _mirror(inventory: Path) -> str:
    return yaml.safe_load(inventory.read_text())["all"]["vars"]["fm9g_mirror_url"]


@pytest.fixture(scope="module")
def monitored(deployed_sandbox, test_config, sandbox_hosts):
    """(inventory, testinfra host of gw1, {host: gateway URL}) after a deploy with monitoring on."""
    import testinfra

    inventory, gateways = deployed_sandbox
    test_config.write_text(MONITORED.format(mirror_url=_mirror(inventory)))
    result = run_cli("deploy", "-i", str(inventory), timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "monitoring: Prometheus on gw1" in result.stdout
    yield inventory, testinfra.get_host("ansible://gw1", ansible_inventory=str(inventory)), gateways
    test_config.write_text(TEST_CONFIG.format(mirror_url=_mirror(inventory)))


def prometheus(gateway_host, path: str, **params) -> dict:
    """GET Prometheus's HTTP API on gw1's loopback (the only place it listens)."""
    arguments = " ".join(f"--data-urlencode {shlex.quote(f'{name}={value}')}" for name, value in params.items())
    result = gateway_host.run(f"curl -sfG {arguments} http://127.0.0.1:9090{path}")
    assert result.rc == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "success", answer
    return answer["data"]


def query(gateway_host, expr: str) -> list:
    return prometheus(gateway_host, "/api/v1/query", query=expr)["result"]


def test_every_planned_target_is_scraped_through_its_hosts_metrics_door(monitored):
    _, gateway, _ = monitored

    def all_up() -> bool:
        targets = prometheus(gateway, "/api/v1/targets", state="active")["activeTargets"]
        return len(targets) == 12 and all(target["health"] == "up" for target in targets)

    assert wait_until(all_up, 60, every=2), prometheus(gateway, "/api/v1/targets", state="active")
    targets = prometheus(gateway, "/api/v1/targets", state="active")["activeTargets"]
    jobs = sorted((t["labels"]["job"], t["labels"].get("host", ""), t["labels"].get("replica", "")) for t in targets)
    assert jobs == sorted([("prometheus", "", "")] + [("fm9g-vllm", host, "0") for host in ("host1", "host2")]
                          + [(job, host, "") for job in ("fm9g-node", "fm9g-nginx", "fm9g-gateway-log")
                             for host in ("host1", "host2", "gw1")])
    # The supervisor's own metrics come through the node exporter's textfile collector.
    assert {r["metric"]["host"] for r in query(gateway, 'fm9g_replica_serving{job="fm9g-node"} == 1')} == \
        {"host1", "host2"}


def test_metrics_reach_the_monitoring_host_only(monitored, sandbox_hosts):
    inventory, gateway, gateways = monitored
    hosts = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"]
    door = f"http://{hosts['host1']['fm9g_serving_address']}:9180/metrics/replica/0"
    code = "curl -s -o /dev/null -w '%{http_code}' "
    assert gateway.run(code + door).stdout == "200"
    assert sandbox_hosts["host2"].run(code + door).stdout == "403", "another serving host read the door"
    for url in gateways.values():  # the public gateway port serves no metrics to anyone
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 404
    assert sandbox_hosts["host1"].run(code + "http://127.0.0.1:8020/metrics").stdout == "404"
    # What the door fronts listens on loopback only.
    listening = sandbox_hosts["host1"].run("ss -ltnH").stdout
    for port in (8100, 9100, 9113, 3903, 9181):
        bound = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        assert bound and all(address.startswith("127.0.0.1:") for address in bound), (port, bound)
    assert "127.0.0.1:9090" in gateway.run("ss -ltnH").stdout


def test_the_alerting_rules_are_loaded_and_fire_on_their_conditions(monitored):
    _, gateway, _ = monitored
    groups = prometheus(gateway, "/api/v1/rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(ALERTS) <= set(loaded), sorted(loaded)
    assert all(loaded[name]["health"] == "ok" for name in ALERTS), loaded
    # promtool's rule tests: synthetic series for each condition, against the rules as deployed.
    cases = (PROJECT_ROOT / "tests" / "fixtures" / "fm9g-alerts-test.yml").read_text()
    with gateway.sudo():
        gateway.run("install -d -m 0700 /tmp/fm9g-alert-tests")
        assert gateway.run(f"printf '%s' {shlex.quote(cases)} > /tmp/fm9g-alert-tests/cases.yml").rc == 0
        result = gateway.run("promtool test rules /tmp/fm9g-alert-tests/cases.yml")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_dashboard_panel_query_returns_data(monitored):
    _, gateway, gateways = monitored
    queries = panel_queries(DASHBOARD)
    assert len(queries) >= 16
    # Completions once Prometheus scrapes both replicas, so their counters and histograms grow
    # between its samples (rates, quantiles); then two scrapes more.
    assert wait_until(lambda: len(query(gateway, 'up{job="fm9g-vllm"} == 1')) == 2, 60, every=1)
    for url in gateways.values():
        for _ in range(3):
            response = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                                  json={"model": "9g", "prompt": "Hi", "max_tokens": 4}, timeout=120)
            assert response.status_code == 200, response.text
    time.sleep(5)
    # Over five minutes (the completions are in that window): a number, not only a series, so
    # a latency quantile whose histogram saw no request (NaN) counts as no data.
    empty = [(title, ref, expr) for title, ref, expr in queries
             if not any(math.isfinite(float(sample["value"][1])) for sample in query(gateway, concrete(expr, "5m")))]
    assert not empty, empty


def test_status_answers_from_the_live_fleet(monitored):
    inventory, _, _ = monitored
    result = run_cli("status", "-i", str(inventory), "--json", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    for host in ("host1", "host2"):
        assert report[host]["release"] == report[host]["desired_release"]
        (replica,) = report[host]["replicas"]
        assert replica["ready"], replica
        assert replica["config_hash"] == replica["desired_config_hash"], replica
        assert not replica["drift"], replica
        metrics = replica["metrics"]
        assert metrics["requests_running"] == 0 and metrics["requests_waiting"] == 0, metrics
        assert 0 <= metrics["kv_cache_usage"] <= 1
    watched = run_cli("status", "-i", str(inventory), "--watch", "1", "--count", "2", timeout=300)
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert watched.stdout.count("host2") >= 2


def test_a_killed_engine_is_seen_down_and_restarted_by_prometheus(monitored, sandbox_hosts):
    _, gateway, _ = monitored
    host = sandbox_hosts["host2"]
    restarts = 'fm9g_replica_restarts_total{host="host2",replica="0"}'
    before = float(query(gateway, restarts)[0]["value"][1])
    with host.sudo():
        assert host.run(f"kill -9 {replica_pids(host, 0)['engine']}").rc == 0

    def seen_down() -> bool:
        alerts = prometheus(gateway, "/api/v1/alerts")["alerts"]
        return any(a["labels"]["alertname"] == "FM9GReplicaDown" and a["labels"].get("host") == "host2"
                   for a in alerts)

    assert wait_until(seen_down, 60, every=1), "no FM9GReplicaDown (pending) for the killed replica"
    assert wait_until(lambda: replica_serves(host, 8100), 300), "the replica did not come back"
    assert wait_until(lambda: float(query(gateway, restarts)[0]["value"][1]) == before + 1, 30, every=2)
    assert wait_until(lambda: not seen_down(), 60, every=2), "FM9GReplicaDown stayed after the replica came back"


def test_verify_checks_the_exporters_and_the_doors(monitored):
    inventory, _, _ = monitored
    result = run_cli("verify", "-i", str(inventory), "-k", "monitoring", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "10 passed, 0 failed, 0 skipped" in result.stdout, result.stdout[-3000:]
