"""A role's values and templates as Ansible renders them on a host, without a host: its defaults,
then its vars, then the overrides a test gives, through Ansible's own templating."""

from __future__ import annotations

import yaml
from ansible.template import trust_as_template

from fm9g_deploy import layout
from fm9g_deploy.config import parse_config
from fm9g_deploy.paths import ROLES_DIR
from fm9g_deploy.profiles import load_profile
from fm9g_deploy.replica_spec import build_replica_spec, serve_settings

PLANNED = {"index": 0, "port": 8100, "tensor_parallel_size": 2, "gpus": [0, 1],
           "gpu_memory_utilization": 0.85, "max_model_len": 4096}


def replica_spec(profile: str = "cuda130", serving: str = "{}", replica: dict | None = None) -> dict:
    """A replica's spec as deploy builds it (fm9g_deploy/replica_spec.py)."""
    config = parse_config(f"profile: {profile}\nmodel: {{name: fm9g-4b}}\nserving: {serving}\n")
    return build_replica_spec(serve_settings(config, load_profile(profile)), replica or PLANNED).to_dict()


def _trusted(value):
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: _trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    return value


def role_templar(role: str, overrides: dict):
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    folder = ROLES_DIR / role
    defaults = yaml.safe_load((folder / "defaults" / "main.yml").read_text("utf-8")) or {}
    role_vars = _trusted(yaml.safe_load((folder / "vars" / "main.yml").read_text("utf-8")) or {})
    spec = overrides.pop("_fm9g_replica_spec", None) or replica_spec()
    values = {"inventory_hostname": "gpu1", "ansible_managed": "managed", "fm9g_layout": layout.host_layout(),
              "fm9g_plan": {"gpu1": [spec]}, "_fm9g_replica_spec": spec, "fm9g_replica_mode": spec["serve_mode"],
              "fm9g_replica_revision": "env:1 model:2 as:upstream"}
    return Templar(loader=DataLoader(), variables={**defaults, **role_vars, **values, **overrides})


def role_value(expression: str, role: str = "fm9g_replica", **overrides):
    """``expression`` rendered with the role's defaults and vars."""
    return role_templar(role, overrides).template(trust_as_template(expression))


def render_role_template(name: str, role: str = "fm9g_replica", **overrides) -> str:
    """A template of the role, rendered as the template module would."""
    text = (ROLES_DIR / role / "templates" / name).read_text("utf-8")
    return role_templar(role, overrides).template(trust_as_template(text), escape_backslashes=False)
