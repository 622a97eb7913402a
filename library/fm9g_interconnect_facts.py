#!/usr/bin/python
"""Ansible module: the host's address and interface on the network its replica's nodes meet on."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_interconnect_facts
short_description: Find the address and interface a node of a replica over hosts binds to
description:
  - One replica over several hosts talks over the hosts' network (vLLM's C(VLLM_HOST_IP), and
    C(GLOO_SOCKET_IFNAME) / C(NCCL_SOCKET_IFNAME) name its interface). Where the inventory names the
    address (C(fm9g_interconnect_address)) its interface is the one holding it; where it names the
    interface only, its first IPv4 address is used; else the interface of the default route.
  - Reads C(ip -json); sets the fact C(fm9g_interconnect) with C(address), C(interface) and
    C(problem) (why none was found, else null). Changes nothing; supports check mode.
options:
  address:
    description: The host's IPv4 address on the interconnect (the inventory's fm9g_interconnect_address).
    type: str
    default: ""
  interface:
    description: The interconnect's interface (the inventory's fm9g_interconnect_interface).
    type: str
    default: ""
author: fm9g-deploy
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: dict
  contains:
    fm9g_interconnect:
      description: address, interface and problem (null when both were found).
      type: dict
"""

import json

from ansible.module_utils.basic import AnsibleModule


def ipv4_addresses(links):
    """interface -> its IPv4 addresses, from ``ip -json -4 addr show``."""
    return {link["ifname"]: [info["local"] for info in link.get("addr_info", []) if info.get("local")]
            for link in links if link.get("ifname")}


def choose(addresses, default_routes, address, interface):
    """(address, interface, problem) from the host's addresses and default routes (ip -json)."""
    if address:
        holders = [name for name, local in addresses.items() if address in local]
        if not holders:
            return None, None, "no interface holds fm9g_interconnect_address %s" % address
        if interface and interface not in holders:
            return None, None, "fm9g_interconnect_address %s is on %s, not on fm9g_interconnect_interface %s" % (
                address, holders[0], interface)
        return address, interface or holders[0], None
    if not interface:
        devices = [route.get("dev") for route in default_routes if route.get("dev")]
        if not devices:
            return None, None, ("no default route to take the interconnect's interface from; set "
                                "fm9g_interconnect_interface (and fm9g_interconnect_address) in the inventory")
        interface = devices[0]
    local = addresses.get(interface)
    if local is None:
        return None, None, "no interface %s on the host" % interface
    if not local:
        return None, None, "interface %s has no IPv4 address" % interface
    return local[0], interface, None


def main():
    module = AnsibleModule(argument_spec={"address": {"type": "str", "default": ""},
                                          "interface": {"type": "str", "default": ""}},
                           supports_check_mode=True)
    ip = module.get_bin_path("ip", required=False, opt_dirs=["/sbin", "/usr/sbin"])
    if not ip:
        facts = {"address": None, "interface": None, "problem": "no `ip` command on the host (install iproute2)"}
        module.exit_json(changed=False, ansible_facts={"fm9g_interconnect": facts})
    outputs = []
    for argv in ([ip, "-json", "-4", "addr", "show"], [ip, "-json", "-4", "route", "show", "default"]):
        rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
        try:
            outputs.append(json.loads(out or "[]") if rc == 0 else None)
        except ValueError:
            outputs.append(None)
        if outputs[-1] is None:
            # Never fatal: only a replica over hosts needs this, and it then names the host and why.
            why = err.strip().splitlines()[-1] if rc != 0 and err.strip() else "no JSON (iproute2 older than 4.13?)"
            facts = {"address": None, "interface": None, "problem": "`%s` failed: %s" % (" ".join(argv[1:]), why)}
            module.exit_json(changed=False, ansible_facts={"fm9g_interconnect": facts})
    address, interface, problem = choose(ipv4_addresses(outputs[0]), outputs[1],
                                         module.params["address"].strip(), module.params["interface"].strip())
    module.exit_json(changed=False, ansible_facts={
        "fm9g_interconnect": {"address": address, "interface": interface, "problem": problem}})


if __name__ == "__main__":
    main()
