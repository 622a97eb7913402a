"""The fm9g_serve role's values and templates as Ansible renders them on a host, without a host:
its defaults, then its vars, then the overrides a test gives, through Ansible's own templating."""

from __future__ import annotations

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from tests.conftest import PROJECT_ROOT

SERVE_ROLE = PROJECT_ROOT / "roles" / "fm9g_serve"
REPLICA = {"index": 0, "port": 8100, "tensor_parallel_size": 2, "gpus": [0, 1],
           "gpu_memory_utilization": 0.85, "max_model_len": 4096}


def _trusted(value):
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: _trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    return value


def _templar(**overrides) -> Templar:
    values = {**yaml.safe_load((SERVE_ROLE / "defaults" / "main.yml").read_text()),
              **_trusted(yaml.safe_load((SERVE_ROLE / "vars" / "main.yml").read_text())),
              "inventory_hostname": "gpu1", "ansible_managed": "managed", "_fm9g_serve_replica": REPLICA,
              **overrides}
    return Templar(loader=DataLoader(), variables=values)


def role_value(expression: str, **overrides):
    """``expression`` rendered with the role's defaults and vars."""
    return _templar(**overrides).template(trust_as_template(expression))


def render_role_template(name: str, **overrides) -> str:
    """A template of the role, rendered as the template module would."""
    text = (SERVE_ROLE / "templates" / name).read_text()
    return _templar(**overrides).template(trust_as_template(text), escape_backslashes=False)
