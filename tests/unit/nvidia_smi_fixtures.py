"""Reading the nvidia-smi fixtures (tests/fixtures/nvidia-smi/, README.md there says which are real
output and which are test doubles) the way the code under test reads a host's nvidia-smi."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fm9g_deploy.gpu import HostGpuFacts, gather_gpu_facts, parse_query_gpu

SMI_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"
DOUBLE = SMI_FIXTURES / "nvidia-smi-double.sh"
#: The columns of a query-gpu.csv without query-gpu.fields: those the real H100 capture was made with.
CAPTURED_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "memory.free",
                   "driver_version", "pci.bus_id", "compute_cap")


def recorded_fields(folder: Path) -> tuple[str, ...]:
    listed = folder / "query-gpu.fields"
    return tuple(listed.read_text().strip().split(",")) if listed.is_file() else CAPTURED_FIELDS


def recorded_gpus(folder: Path):
    """parse_query_gpu over the folder's query-gpu.csv as recorded (its own columns)."""
    return parse_query_gpu((folder / "query-gpu.csv").read_text(), recorded_fields(folder))


def double_runner(folder: Path):
    """A gpu.Runner whose "nvidia-smi" is the test double replaying ``folder``."""
    def run(argv):
        done = subprocess.run(["sh", str(DOUBLE), *argv[1:]], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "FM9G_NVIDIA_SMI_DOUBLE_DIR": str(folder)})
        return done.returncode, done.stdout, done.stderr
    return run


def facts_from_double(folder: Path) -> HostGpuFacts:
    """gather_gpu_facts as a host runs it, with the double asked the module's real query."""
    return gather_gpu_facts("nvidia-smi", double_runner(folder))
