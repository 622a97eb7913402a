"""library/fm9g_interconnect_facts.py: the address and interface a node of a replica over hosts
binds to (VLLM_HOST_IP, GLOO/NCCL_SOCKET_IFNAME), from the inventory or the host's own routes."""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT_ROOT, load_file_module
from tests.unit.ansible_module import run_library_module

interconnect = load_file_module(PROJECT_ROOT / "library" / "fm9g_interconnect_facts.py")

#: `ip -json -4 addr show` and `ip -json -4 route show default` of a host with a LAN and an InfiniBand port.
ADDRESSES = interconnect.ipv4_addresses([
    {"ifindex": 1, "ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifindex": 2, "ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.168.1.20", "prefixlen": 24}]},
    {"ifindex": 3, "ifname": "ib0", "addr_info": [{"family": "inet", "local": "10.10.0.20", "prefixlen": 16}]},
    {"ifindex": 4, "ifname": "eth1", "addr_info": []},
])
DEFAULT = [{"dst": "default", "gateway": "192.168.1.1", "dev": "eth0", "protocol": "dhcp"}]


@pytest.mark.parametrize(("address", "interface", "found"), [
    ("", "", ("192.168.1.20", "eth0", None)),           # the default route's interface
    ("", "ib0", ("10.10.0.20", "ib0", None)),           # the inventory names the interconnect
    ("10.10.0.20", "", ("10.10.0.20", "ib0", None)),    # ... or its address
    ("10.10.0.20", "ib0", ("10.10.0.20", "ib0", None)),
])
def test_the_inventory_chooses_else_the_default_route(address, interface, found):
    assert interconnect.choose(ADDRESSES, DEFAULT, address, interface) == found


@pytest.mark.parametrize(("address", "interface", "routes", "problem"), [
    ("10.9.9.9", "", DEFAULT, "no interface holds fm9g_interconnect_address 10.9.9.9"),
    ("10.10.0.20", "eth0", DEFAULT, "fm9g_interconnect_address 10.10.0.20 is on ib0, not on fm9g_interconnect_interface eth0"),
    ("", "ib9", DEFAULT, "no interface ib9 on the host"),
    ("", "eth1", DEFAULT, "interface eth1 has no IPv4 address"),
    ("", "", [], "no default route to take the interconnect's interface from; set fm9g_interconnect_interface"),
])
def test_what_cannot_be_found_says_why(address, interface, routes, problem):
    found, name, why = interconnect.choose(ADDRESSES, routes, address, interface)
    assert (found, name) == (None, None) and why.startswith(problem)


def test_the_module_reads_this_machines_own_interfaces(monkeypatch, capsys):
    """A real run of `ip -json` here: loopback is always there."""
    code, result = run_library_module("fm9g_interconnect_facts", {"interface": "lo"}, monkeypatch, capsys)
    assert code == 0 and result["changed"] is False
    assert result["ansible_facts"]["fm9g_interconnect"] == {"address": "127.0.0.1", "interface": "lo", "problem": None}


def test_an_ip_without_json_is_a_problem_not_a_failure(monkeypatch, capsys, tmp_path):
    """Only a replica over hosts needs the address: an old iproute2 must not fail every plan (double: an `ip`
    that prints text, as iproute2 before 4.13 did for -json)."""
    fake = tmp_path / "ip"
    fake.write_text("#!/bin/sh\necho '1: lo: <LOOPBACK,UP> mtu 65536'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr("ansible.module_utils.basic.AnsibleModule.get_bin_path",
                        lambda self, name, required=False, opt_dirs=None: str(fake))
    code, result = run_library_module("fm9g_interconnect_facts", {}, monkeypatch, capsys)
    facts = result["ansible_facts"]["fm9g_interconnect"]
    assert code == 0 and not result.get("failed")
    assert facts["address"] is None and facts["problem"].startswith("`-json -4 addr show` failed: no JSON")
