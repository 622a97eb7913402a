"""Monitoring without hosts: the config section, which host runs Prometheus, what deploy tells the
plays, the role's templates as Ansible renders them, and the supervisor's textfile metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fm9g_deploy.config import parse_config
from fm9g_deploy.errors import UserError
from fm9g_deploy.monitoring import monitoring_host, monitoring_vars
from fm9g_deploy.sandbox.inventory import SANDBOX_CONFIG
from tests.unit.role_render import render_role_template
from tests.unit.test_replica_supervisor import load_supervisor_module


def _inventory(tmp_path: Path, gateway: bool) -> Path:
    groups = {"serving": {"hosts": {"gpu-b": {}, "gpu-a": {}}}}
    if gateway:
        groups["gateway"] = {"hosts": {"edge": {}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": groups}}, sort_keys=False))
    return path


def test_monitoring_is_off_unless_configured_and_on_in_the_sandbox():
    assert parse_config("").monitoring.enabled is False
    sandbox = parse_config(SANDBOX_CONFIG.format(mirror_url="http://mirror:8080"))
    assert sandbox.monitoring.enabled is True and sandbox.monitoring.scrape_interval_s == 5


@pytest.mark.parametrize("text,problem", [
    ("serving: {port: 9180}\nmonitoring: {enabled: true}", "monitoring.scrape_port 9180 is also serving.port"),
    ("serving: {replicas_per_host: 4}\nmonitoring: {prometheus_port: 8102}",
     "monitoring.prometheus_port 8102 is also the port of replica 2"),
    ("monitoring: {scrape_port: 9090}", "monitoring.prometheus_port 9090 is also monitoring.scrape_port"),
    ("monitoring: {alerts: {kv_cache_usage: 1.5}}", "kv_cache_usage"),
    ("monitoring: {scrape_interval: 5}", "scrape_interval"),
])
def test_bad_monitoring_settings_are_refused_in_one_line(text, problem):
    with pytest.raises(UserError) as caught:
        parse_config(text)
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value).strip()


def test_prometheus_runs_on_the_gateway_host_else_the_first_serving_host(tmp_path):
    config = parse_config("monitoring: {enabled: true}")
    assert monitoring_host(config, _inventory(tmp_path, gateway=True)) == "edge"
    assert monitoring_host(config, _inventory(tmp_path, gateway=False)) == "gpu-b"
    chosen = parse_config("monitoring: {enabled: true, host: gpu-a}")
    assert monitoring_host(chosen, _inventory(tmp_path, gateway=True)) == "gpu-a"


def test_a_monitoring_host_outside_the_inventory_is_refused(tmp_path):
    config = parse_config("monitoring: {enabled: true, host: nowhere}")
    with pytest.raises(UserError, match="monitoring.host 'nowhere' is not a host of inventory"):
        monitoring_host(config, _inventory(tmp_path, gateway=False))


def test_deploy_passes_every_hosts_replicas_and_the_thresholds():
    class Replica:
        def __init__(self, index):
            self.index = index

    class HostPlan:
        def __init__(self, count):
            self.replicas = [Replica(i) for i in range(count)]

    class Spanning:
        hosts = ["gpu-c", "gpu-d"]

    class Plan:
        hosts = {"gpu-a": HostPlan(2), "gpu-b": HostPlan(1), "gpu-c": HostPlan(0), "gpu-d": HostPlan(0)}
        multi_host_replicas = [Spanning()]

    config = parse_config("monitoring: {enabled: true, scrape_interval_s: 30, alerts: {ttft_p95_s: 2.5}}")
    values = monitoring_vars(config, "edge", Plan())
    # A replica over hosts is scraped at its head (replica 0); its other nodes serve no /metrics.
    assert values["fm9g_monitoring_plan"] == {"gpu-a": [0, 1], "gpu-b": [0], "gpu-c": [0], "gpu-d": []}
    assert values["fm9g_monitoring_host"] == "edge" and values["fm9g_monitoring_scrape_interval_s"] == 30
    assert values["fm9g_monitoring_alerts"]["ttft_p95_s"] == 2.5


TARGETS = [{"host": "gpu-a", "address": "10.0.0.11", "replicas": [0, 1]},
           {"host": "edge", "address": "10.0.0.2", "replicas": []}]


def test_prometheus_scrapes_each_replica_and_each_hosts_exporters_through_the_door():
    text = render_role_template("prometheus.yml.j2", role="fm9g_monitoring", fm9g_monitoring_targets=TARGETS,
                                fm9g_monitoring_scrape_interval_s=30)
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "30s" and config["global"]["scrape_timeout"] == "10s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    vllm = jobs["fm9g-vllm"]["static_configs"]
    assert [(c["targets"], c["labels"]["instance"], c["labels"]["__metrics_path__"]) for c in vllm] == [
        (["10.0.0.11:9180"], "gpu-a/0", "/metrics/replica/0"), (["10.0.0.11:9180"], "gpu-a/1", "/metrics/replica/1")]
    for job, path in (("fm9g-node", "/metrics/node"), ("fm9g-nginx", "/metrics/nginx"),
                      ("fm9g-gateway-log", "/metrics/gateway-log")):
        assert jobs[job]["metrics_path"] == path
        assert [c["labels"]["host"] for c in jobs[job]["static_configs"]] == ["gpu-a", "edge"]


def test_a_fleet_without_replicas_still_gives_a_valid_scrape_config():
    config = yaml.safe_load(render_role_template("prometheus.yml.j2", role="fm9g_monitoring",
                                                 fm9g_monitoring_targets=[TARGETS[1]]))
    assert {job["job_name"]: job for job in config["scrape_configs"]}["fm9g-vllm"]["static_configs"] == []


def test_the_alerting_rules_carry_the_configured_thresholds():
    alerts = {"kv_cache_usage": 0.8, "requests_waiting": 7, "queue_for_s": 30, "ttft_p95_s": 2.5,
              "restarts": 4, "restart_window_s": 600}
    rules = yaml.safe_load(render_role_template("fm9g-alerts.yml.j2", role="fm9g_monitoring",
                                                fm9g_monitoring_alerts=alerts))["groups"][0]["rules"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert set(by_name) == {"FM9GReplicaDown", "FM9GReplicaRestartLoop", "FM9GKVCacheHigh",
                            "FM9GRequestsQueueing", "FM9GTimeToFirstTokenHigh"}
    assert by_name["FM9GKVCacheHigh"]["expr"].endswith("> 0.8")
    assert by_name["FM9GRequestsQueueing"]["expr"].endswith(">= 7") and by_name["FM9GRequestsQueueing"]["for"] == "30s"
    assert by_name["FM9GTimeToFirstTokenHigh"]["expr"].endswith("> 2.5")
    assert "[600s]) >= 4" in by_name["FM9GReplicaRestartLoop"]["expr"]
    # Prometheus's own templates survive Ansible's.
    assert "{{ $labels.host }}" in by_name["FM9GReplicaDown"]["annotations"]["summary"]


def test_the_door_lets_in_loopback_and_the_monitoring_host_and_routes_each_replica():
    replicas = [{"index": 0, "port": 8100}, {"index": 1, "port": 8101}]
    text = render_role_template("metrics-door.conf.j2", role="fm9g_monitoring", fm9g_monitoring_replicas=replicas,
                                fm9g_monitoring_allow=["10.0.0.2", "fd00::2"])
    door = text.split("server {")[1]
    assert re.findall(r"(allow|deny) (\S+);", door) == [("allow", "127.0.0.1"), ("allow", "10.0.0.2"),
                                                         ("allow", "fd00::2"), ("deny", "all")]
    assert "location = /metrics/replica/1 { proxy_pass http://127.0.0.1:8101/metrics; }" in door
    stub = text.split("server {")[2]
    assert "listen 127.0.0.1:9181;" in stub and "stub_status;" in stub


def test_the_supervisor_writes_its_state_as_prometheus_text(tmp_path):
    supervisor = load_supervisor_module()
    state = supervisor.StateFile(str(tmp_path / "replica-3.state.json"), str(tmp_path / "replica-3.prom"), 3)
    state.write(state="serving", restarts=2)
    text = (tmp_path / "replica-3.prom").read_text()
    assert 'fm9g_replica_restarts_total{replica="3"} 2\n' in text
    assert 'fm9g_replica_serving{replica="3"} 1\n' in text and 'fm9g_replica_failed{replica="3"} 0\n' in text
    state.write(state="failed")
    assert 'fm9g_replica_failed{replica="3"} 1\n' in (tmp_path / "replica-3.prom").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["replica-3.prom", "replica-3.state.json"]
