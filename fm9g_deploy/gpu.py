"""GPU facts from nvidia-smi: which GPUs a host has and which CUDA version its driver supports.

Standard library only, and Python 3.8 compatible: this same file is the Ansible module_utils
``fm9g_gpu`` (module_utils/fm9g_gpu.py links here) that library/fm9g_gpu_facts.py runs on the
managed hosts, so the control node and the hosts share one parser.

``python -m fm9g_deploy.gpu`` prints this machine's facts as JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple

#: The columns we ask nvidia-smi for, in order.
QUERY_FIELDS = (
    "index", "uuid", "name", "memory.total", "memory.used", "memory.free",
    "driver_version", "pci.bus_id", "compute_cap",
)
QUERY_GPU_ARGS = ["--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]
VERSION_ARGS = ["--version"]

#: How nvidia-smi writes a value it does not have ("[N/A]", "[Not Supported]", ...).
_MISSING = re.compile(r"^\[.*\]$|^N/A$")
_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*([0-9]+(?:\.[0-9]+)*)")
_DRIVER_VERSION = re.compile(r"(?:DRIVER version|Driver Version)\s*:\s*([0-9][0-9.]*)")

#: run(argv) -> (exit status, stdout, stderr); Ansible passes module.run_command.
Runner = Callable[[List[str]], Tuple[int, str, str]]


@dataclass
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: Optional[int]
    memory_free_mib: Optional[int]
    driver_version: Optional[str]
    pci_bus_id: Optional[str]
    compute_capability: Optional[str]


@dataclass
class HostGpuFacts:
    """What one host has. No GPUs (and ``problem`` saying why) is a normal answer."""

    gpus: List[GpuInfo] = field(default_factory=list)
    driver_version: Optional[str] = None
    #: Highest CUDA version the driver supports, as nvidia-smi reports it ("13.0").
    cuda_driver_version: Optional[str] = None
    #: Path of nvidia-smi on the host, None where there is none.
    nvidia_smi: Optional[str] = None
    #: Why no GPU was found when nvidia-smi exists but failed ("couldn't communicate with the driver").
    problem: Optional[str] = None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gpu_count"] = self.gpu_count
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "HostGpuFacts":
        """Inverse of to_dict; ValueError naming the problem for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError("GPU facts must be a mapping")
        try:
            gpus = [GpuInfo(**gpu) for gpu in data.get("gpus") or []]
        except TypeError as exc:
            raise ValueError("malformed GPU entry: %s" % exc) from None
        return cls(
            gpus=gpus,
            driver_version=data.get("driver_version"),
            cuda_driver_version=data.get("cuda_driver_version"),
            nvidia_smi=data.get("nvidia_smi"),
            problem=data.get("problem"),
        )


def _value(text: str) -> Optional[str]:
    text = text.strip()
    return None if not text or _MISSING.match(text) else text


def _mib(text: str, column: str, required: bool) -> Optional[int]:
    value = _value(text)
    if value is None:
        if required:
            raise ValueError("nvidia-smi gave no %s" % column)
        return None
    value = re.sub(r"\s*MiB$", "", value)
    try:
        return int(float(value))
    except ValueError:
        raise ValueError("nvidia-smi gave %s %r, not a number of MiB" % (column, text)) from None


def parse_query_gpu(text: str) -> List[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits``."""
    gpus = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # GPU names hold no commas; split on the separator nvidia-smi writes.
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(QUERY_FIELDS):
            raise ValueError(
                "line %d of nvidia-smi --query-gpu output has %d columns, expected %d (%s): %r"
                % (number, len(cells), len(QUERY_FIELDS), ",".join(QUERY_FIELDS), line.strip())
            )
        row = dict(zip(QUERY_FIELDS, cells))
        try:
            index = int(row["index"])
        except ValueError:
            raise ValueError("line %d of nvidia-smi output: index %r is not a number" % (number, row["index"])) from None
        gpus.append(GpuInfo(
            index=index,
            uuid=row["uuid"],
            name=row["name"],
            memory_total_mib=_mib(row["memory.total"], "memory.total", required=True),
            memory_used_mib=_mib(row["memory.used"], "memory.used", required=False),
            memory_free_mib=_mib(row["memory.free"], "memory.free", required=False),
            driver_version=_value(row["driver_version"]),
            pci_bus_id=_value(row["pci.bus_id"]),
            compute_capability=_value(row["compute_cap"]),
        ))
    return sorted(gpus, key=lambda gpu: gpu.index)


def parse_cuda_version(text: str) -> Optional[str]:
    """The driver's CUDA version from ``nvidia-smi --version``, plain ``nvidia-smi`` or ``-q``."""
    match = _CUDA_VERSION.search(text)
    return match.group(1) if match else None


def parse_driver_version(text: str) -> Optional[str]:
    match = _DRIVER_VERSION.search(text)
    return match.group(1) if match else None


def version_tuple(version: str) -> Tuple[int, ...]:
    """"12.1" -> (12, 1); ValueError for anything that is not dotted numbers."""
    if not re.match(r"^[0-9]+(\.[0-9]+)*$", version.strip()):
        raise ValueError("%r is not a version like 12.1" % version)
    return tuple(int(part) for part in version.strip().split("."))


def cuda_support_problem(driver_cuda: Optional[str], required: str) -> Optional[str]:
    """Why a driver reporting ``driver_cuda`` cannot run a CUDA ``required`` stack, or None."""
    if driver_cuda is None:
        return ("nvidia-smi did not report the driver's CUDA version, so CUDA %s support cannot be "
                "confirmed; install an NVIDIA driver that supports CUDA %s or newer" % (required, required))
    if version_tuple(driver_cuda) < version_tuple(required):
        return ("the NVIDIA driver supports CUDA up to %s but the stack needs CUDA %s; upgrade the "
                "driver to one that supports CUDA %s or newer" % (driver_cuda, required, required))
    return None


def _first_line(*texts: str) -> str:
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()[:300]
    return "no output"


def gather_gpu_facts(nvidia_smi: Optional[str], run: Runner) -> HostGpuFacts:
    """Run nvidia-smi (at path ``nvidia_smi``; None means the host has none) through ``run``."""
    if not nvidia_smi:
        return HostGpuFacts(problem="nvidia-smi not found")
    facts = HostGpuFacts(nvidia_smi=nvidia_smi)
    rc, out, err = run([nvidia_smi] + QUERY_GPU_ARGS)
    if rc != 0:
        # Driver not loaded, no devices, ...: the host has no usable GPU; say why.
        facts.problem = "nvidia-smi failed (exit %d): %s" % (rc, _first_line(out, err))
        return facts
    try:
        facts.gpus = parse_query_gpu(out)
    except ValueError as exc:
        facts.problem = str(exc)
        return facts
    # `--version` is newer than some drivers; the banner of plain nvidia-smi has it too.
    rc, out, _ = run([nvidia_smi] + VERSION_ARGS)
    if rc != 0 or parse_cuda_version(out) is None:
        rc, out, _ = run([nvidia_smi])
    facts.cuda_driver_version = parse_cuda_version(out) if rc == 0 else None
    drivers = {gpu.driver_version for gpu in facts.gpus if gpu.driver_version}
    facts.driver_version = sorted(drivers)[0] if drivers else parse_driver_version(out)
    return facts


def run_locally(argv: List[str]) -> Tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, LC_ALL="C"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def main() -> None:
    print(json.dumps(gather_gpu_facts(shutil.which("nvidia-smi"), run_locally).to_dict(), indent=2))


if __name__ == "__main__":
    main()
