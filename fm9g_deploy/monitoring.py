"""Monitoring's part of a deploy: which host runs Prometheus, and what the roles are told.

The targets come from the same plan that deploys the replicas: every replica of every serving
host, and every host's node exporter, nginx exporter and gateway log, through each host's metrics
door (roles/fm9g_monitoring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fm9g_deploy.ansible import SERVING_GROUP, read_inventory
from fm9g_deploy.errors import UserError

GATEWAY_GROUP = "gateway"


def monitoring_host(config, inventory: Path) -> str:
    """The host that runs Prometheus: monitoring.host, else the first `gateway` host, else the
    first `serving` host (inventory order). UserError when monitoring.host is not in the inventory."""
    manager, _, _ = read_inventory(inventory)
    chosen = config.monitoring.host
    if chosen:
        if chosen not in {host.name for host in manager.get_hosts("all")}:
            raise UserError(f"monitoring.host {chosen!r} is not a host of inventory {inventory}; name one of its "
                            "hosts, or remove monitoring.host to use the gateway host (else the first serving host)")
        return chosen
    for group in (GATEWAY_GROUP, SERVING_GROUP):
        hosts = manager.get_hosts(group) if group in manager.groups else []
        if hosts:
            return hosts[0].name
    raise UserError(f"inventory {inventory} has no `{SERVING_GROUP}` host to run Prometheus on; add one, or set "
                    "monitoring.enabled: false")


def monitoring_vars(config, host: str | None, plan) -> dict[str, Any]:
    """What playbooks/serve.yml's monitoring plays get: the config's monitoring section and, per
    serving host of ``plan`` (the whole fleet's, even under --limit), its replicas' indexes: a
    replica over hosts is its head's replica 0 (the other nodes serve no /metrics)."""
    monitoring = config.monitoring
    replicas = {name: [replica.index for replica in host_plan.replicas] for name, host_plan in plan.hosts.items()}
    for spanning in plan.multi_host_replicas:
        replicas[spanning.hosts[0]] = [0]
    return {
        "fm9g_monitoring_enabled": monitoring.enabled,
        "fm9g_monitoring_host": host or "",
        "fm9g_monitoring_scrape_port": monitoring.scrape_port,
        "fm9g_monitoring_prometheus_port": monitoring.prometheus_port,
        "fm9g_monitoring_scrape_interval_s": monitoring.scrape_interval_s,
        "fm9g_monitoring_retention_days": monitoring.retention_days,
        "fm9g_monitoring_alerts": monitoring.alerts.model_dump(),
        "fm9g_monitoring_plan": replicas,
    }
