"""The fm9g_serve role's values and templates as Ansible renders them on a host, without a host:
its defaults, then its vars, then the overrides a test gives, through Ansible's own templating."""

from __future__ import annotations

from ansible.template import trust_as_template

from fm9g_deploy.replica_command import render_template, role_templar

REPLICA = {"index": 0, "port": 8100, "tensor_parallel_size": 2, "gpus": [0, 1],
           "gpu_memory_utilization": 0.85, "max_model_len": 4096}


def _values(overrides: dict) -> dict:
    return {"inventory_hostname": "gpu1", "ansible_managed": "managed", "_fm9g_serve_replica": REPLICA, **overrides}


def role_value(expression: str, **overrides):
    """``expression`` rendered with the role's defaults and vars."""
    return role_templar(_values(overrides)).template(trust_as_template(expression))


def render_role_template(name: str, **overrides) -> str:
    """A template of the role, rendered as the template module would."""
    return render_template(name, _values(overrides))
