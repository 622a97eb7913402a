"""The gateway: nginx runs, listens on the service port, and its configuration passes `nginx -t`."""

from __future__ import annotations

import pytest

from fm9g_deploy.verify_suite.facts import GATEWAY_UNIT
from fm9g_deploy.verify_suite.support import (
    as_root,
    describe_state,
    expect,
    last_line,
    listening_tcp,
    unit_property,
)


@pytest.mark.journal("gateway")
def test_nginx_is_enabled_and_running(host):
    """nginx enabled and running"""
    enabled = unit_property(host, GATEWAY_UNIT, "UnitFileState")
    active, sub = unit_property(host, GATEWAY_UNIT, "ActiveState"), unit_property(host, GATEWAY_UNIT, "SubState")
    expect((active, sub) == ("active", "running"), f"{GATEWAY_UNIT} is {describe_state(active, sub)}")
    expect(enabled == "enabled", f"{GATEWAY_UNIT} is {enabled or 'not installed'}, not enabled")


@pytest.mark.journal("gateway")
def test_nginx_listens_on_the_service_port(host, facts):
    """nginx listens on the service port"""
    port = facts.gateway_port
    expect([s for s in listening_tcp(host) if s.port == port], f"nothing listens on the service port {port}")


@pytest.mark.journal("gateway")
def test_nginx_config_passes_nginx_t(host):
    """nginx -t passes"""
    with as_root(host):
        result = host.run("nginx -t -q")
    expect(result.rc == 0, f"nginx -t: {last_line(result.stderr) or f'exit {result.rc}'}")
