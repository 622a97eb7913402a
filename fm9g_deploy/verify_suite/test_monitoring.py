"""Monitoring (monitoring.enabled): the exporters and mtail run, listen on loopback only, and the
host's metrics door serves every planned replica's vLLM metrics. Skipped when monitoring is off."""

from __future__ import annotations

import pytest

from fm9g_deploy.replica_spec import serves_api
from fm9g_deploy.verify_suite.support import (
    describe_state,
    expect,
    last_line,
    listening_tcp,
    unit_pids,
    unit_property,
)

#: What the monitoring role runs on every host, behind the metrics door.
EXPORTER_UNITS = ("prometheus-node-exporter.service", "prometheus-nginx-exporter.service", "mtail.service")


@pytest.fixture(autouse=True)
def _monitoring_on(facts):
    if not facts.monitoring_scrape_port:
        pytest.skip("monitoring.enabled is false")


@pytest.mark.parametrize("unit", EXPORTER_UNITS, ids=["node_exporter", "nginx_exporter", "mtail"])
def test_exporter_is_enabled_and_running(host, hostname, unit):
    """enabled and running"""
    active, sub = unit_property(host, unit, "ActiveState"), unit_property(host, unit, "SubState")
    expect((active, sub) == ("active", "running"), f"{unit} is {describe_state(active, sub)}")
    enabled = unit_property(host, unit, "UnitFileState")
    expect(enabled == "enabled", f"{unit} is {enabled or 'not installed'}, not enabled")


def test_exporters_listen_on_loopback_only(host, hostname):
    """exporters on loopback only"""
    sockets = listening_tcp(host)
    for unit in EXPORTER_UNITS:
        pids = unit_pids(host, unit)
        # By process, or by the unit's cgroup where ss shows no process (a unit with its own user).
        mine = [s for s in sockets if s.pids & pids or s.cgroup.endswith("/" + unit)]
        expect(mine, f"{unit} listens on no TCP port")
        outside = [str(s) for s in mine if not s.loopback]
        expect(not outside, f"{unit} listens beyond loopback: {', '.join(outside)}")


def test_the_metrics_door_serves_the_replica(host, facts, replica):
    """its metrics through the door"""
    if not serves_api(replica):
        pytest.skip("a headless node of a replica over hosts: its head's door serves the replica's metrics")
    port, index = facts.monitoring_scrape_port, replica["index"]
    result = host.run("curl -sS -m 10 -o /dev/null -w '%%{http_code}' http://127.0.0.1:%s/metrics/replica/%s",
                      str(port), str(index))
    expect(result.stdout == "200", f"127.0.0.1:{port}/metrics/replica/{index} answered "
                                   f"{result.stdout or last_line(result.stderr) or 'nothing'}, not 200")
    body = host.run("curl -sS -m 10 http://127.0.0.1:%s/metrics/replica/%s", str(port), str(index)).stdout
    expect("vllm:num_requests_running" in body, f"/metrics/replica/{index} is not vLLM's metrics")
