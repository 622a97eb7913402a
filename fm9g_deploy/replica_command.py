"""A replica's command line and environment, exactly as the serve role's systemd unit runs them.

Renders the fm9g_serve role's unit and environment templates through Ansible's own templating,
with the role's defaults and vars under the values a deployment passes, then reads them the way
systemd does (``Environment=``, ``EnvironmentFile=``, ``ExecStart=`` with ``${VAR}`` and ``%i``).
Used where no systemd runs the unit (a GPU host lent for a proof, a dry run); the templates stay
the one source of the command line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import yaml

from fm9g_deploy.paths import ROLES_DIR

SERVE_ROLE = ROLES_DIR / "fm9g_serve"
UNIT_TEMPLATE = "fm9g-replica@.service.j2"
#: The unit's environment files and the templates the role writes them from.
ENV_FILE_TEMPLATES = {"api-key.env": "api-key.env.j2", "replica-%i.env": "replica.env.j2"}


@dataclass(frozen=True)
class ReplicaLaunch:
    """What systemd would start for one replica."""

    argv: list[str]
    environment: dict[str, str]
    unit: str

    def vllm_argv(self) -> list[str]:
        """The vLLM server's own command line (after the supervisor's ``--``)."""
        return self.argv[self.argv.index("--") + 1:]


def trusted(value):
    """``value`` with its strings marked as templates Ansible may render (as a role's vars are)."""
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [trusted(item) for item in value]
    return value


def role_templar(values: dict):
    """Ansible's templating with the role's defaults, then its vars, then ``values``."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    defaults = yaml.safe_load((SERVE_ROLE / "defaults" / "main.yml").read_text("utf-8"))
    role_vars = trusted(yaml.safe_load((SERVE_ROLE / "vars" / "main.yml").read_text("utf-8")))
    return Templar(loader=DataLoader(), variables={**defaults, **role_vars, **values})


def render_template(name: str, values: dict) -> str:
    """One of the role's templates, rendered as the template module would."""
    from ansible.template import trust_as_template

    text = (SERVE_ROLE / "templates" / name).read_text("utf-8")
    return role_templar(values).template(trust_as_template(text), escape_backslashes=False)


def _service_lines(unit: str) -> list[tuple[str, str]]:
    """(key, value) of the [Service] section, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", unit)
    section, lines = None, []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            lines.append((key, value.strip()))
    return lines


def _env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def replica_launch(serve_vars: dict, replica: dict, *, hostname: str = "localhost") -> ReplicaLaunch:
    """The replica's argv and environment from ``serve_vars`` (what deploy passes the role)."""
    values = {**serve_vars, "_fm9g_serve_replica": replica, "inventory_hostname": hostname,
              "ansible_managed": "rendered by fm9g-deploy"}
    unit = render_template(UNIT_TEMPLATE, values)
    index = str(replica["index"])
    environment: dict[str, str] = {}
    exec_start = None
    config_dir = values.get("fm9g_serve_config_dir") or "/etc/fm9g"
    for key, value in _service_lines(unit):
        if key == "EnvironmentFile":
            template = ENV_FILE_TEMPLATES.get(value.removeprefix(config_dir.rstrip("/") + "/"))
            if template is None:
                raise ValueError(f"the unit reads {value}, which no template of the role writes")
            environment.update(_env_file(render_template(template, values)))
        elif key == "Environment":
            environment.update(pair.split("=", 1) for pair in shlex.split(value.replace("%i", index)))
        elif key == "ExecStart":
            exec_start = value.replace("%i", index)
    if exec_start is None:
        raise ValueError("the rendered unit has no ExecStart")
    # systemd replaces a word that is exactly ${VAR} by the variable's value.
    argv = [re.sub(r"\$\{(\w+)\}", lambda match: environment.get(match.group(1), ""), word)
            for word in shlex.split(exec_start)]
    return ReplicaLaunch(argv=argv, environment=environment, unit=unit)
