"""Facts read from hosts through Ansible (GPU facts for the planner)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fm9g_deploy.errors import OperationFailed


def gather_gpu_facts(inventory: Path, limit: str | None = None) -> dict:
    """Run playbooks/gpu_facts.yml and read the one JSON file per host it writes."""
    from fm9g_deploy.ansible import run_playbook
    from fm9g_deploy.gpu import HostGpuFacts

    with tempfile.TemporaryDirectory(prefix="fm9g-gpu-facts-") as folder:
        result = run_playbook("gpu_facts.yml", inventory, limit=limit, quiet=True,
                              extra_vars={"fm9g_gpu_facts_dir": folder})
        if not result.ok:
            detail = "; ".join(result.problems) or f"ansible-playbook exited with {result.rc}"
            raise OperationFailed(f"reading GPU facts failed: {detail}")
        facts = {}
        for path in sorted(Path(folder).glob("*.json")):
            try:
                facts[path.stem] = HostGpuFacts.from_dict(json.loads(path.read_text("utf-8")))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                raise OperationFailed(f"GPU facts of host {path.stem} are unreadable: {exc}") from None
    return facts
