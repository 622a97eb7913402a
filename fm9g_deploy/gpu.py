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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: The columns we ask nvidia-smi for, in order.
QUERY_FIELDS = (
    "index", "uuid", "name", "memory.total", "memory.used", "memory.free",
    "driver_version", "pci.bus_id", "compute_cap", "mig.mode.current",
)
#: Columns drivers older than the field reject ('Field "compute_cap" is not a valid field to query.',
#: e.g. R470): asked again without them, so such a host still gets its driver named, not "no GPU".
NEWER_FIELDS = ("compute_cap", "mig.mode.current")
BASE_FIELDS = tuple(name for name in QUERY_FIELDS if name not in NEWER_FIELDS)
VERSION_ARGS = ["--version"]


def query_gpu_args(fields: Sequence[str] = QUERY_FIELDS) -> List[str]:
    return ["--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]


QUERY_GPU_ARGS = query_gpu_args()

#: How nvidia-smi writes a value it does not have ("[N/A]", "[Not Supported]", "[Unknown Error]", ...).
_MISSING = re.compile(r"^\[.*\]$|^N/A$")
#: Of those, the ones that mean the GPU lacks the feature, not that reading it failed.
NOT_SUPPORTED = ("[N/A]", "N/A", "[Not Supported]")
_INVALID_FIELD = "is not a valid field to query"
_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*([0-9]+(?:\.[0-9]+)*)")
_DRIVER_VERSION = re.compile(r"(?:DRIVER version|Driver Version)\s*:\s*([0-9][0-9.]*)")

#: run(argv) -> (exit status, stdout, stderr); Ansible passes module.run_command.
Runner = Callable[[List[str]], Tuple[int, str, str]]


@dataclass
class GpuInfo:
    """One GPU. A value nvidia-smi did not give is None, and ``unreported`` says what it printed
    instead, per field; the planner decides what the GPU is good for without it."""

    index: int
    uuid: Optional[str]
    name: Optional[str]
    memory_total_mib: Optional[int]
    memory_used_mib: Optional[int]
    memory_free_mib: Optional[int]
    driver_version: Optional[str]
    pci_bus_id: Optional[str]
    compute_capability: Optional[str]
    #: "Enabled" or "Disabled"; None where the GPU has no MIG (nvidia-smi: [N/A]) or was not asked.
    mig_mode: Optional[str] = None
    #: nvidia-smi field -> what it printed instead of a value: {"memory.total": "[Unknown Error]"}.
    unreported: Dict[str, str] = field(default_factory=dict)

    @property
    def mig_enabled(self) -> bool:
        return self.mig_mode == "Enabled"


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


def _mib(text: str, column: str, number: int) -> Optional[int]:
    value = _value(text)
    if value is None:
        return None
    value = re.sub(r"\s*MiB$", "", value)
    try:
        return int(float(value))
    except ValueError:
        # Not nvidia-smi's "no value" either: output we would misread, so refuse it all.
        raise ValueError("line %d of nvidia-smi output: %s %r is not a number of MiB" % (number, column, text)) from None


def parse_query_gpu(text: str, fields: Sequence[str] = QUERY_FIELDS) -> List[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits``.

    Each field is read on its own: a GPU whose value is missing ("[N/A]", "[Unknown Error]") is
    kept with None there. ValueError for output that cannot be read as a whole: the wrong number of
    columns, an index that is not a number, a number field holding something else, or an index (or
    UUID) listed twice."""
    gpus = []
    seen: Dict[str, Dict[str, int]] = {"index": {}, "uuid": {}}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # GPU names hold no commas; split on the separator nvidia-smi writes.
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(fields):
            raise ValueError(
                "line %d of nvidia-smi --query-gpu output has %d columns, expected %d (%s): %r"
                % (number, len(cells), len(fields), ",".join(fields), line.strip())
            )
        row = dict(zip(fields, cells))
        try:
            # The index is how the plan and CUDA_VISIBLE_DEVICES name the GPU: without it, nothing.
            index = int(row["index"])
        except ValueError:
            raise ValueError("line %d of nvidia-smi output: index %r is not a number" % (number, row["index"])) from None
        gpu = GpuInfo(
            index=index,
            uuid=_value(row["uuid"]),
            name=_value(row["name"]),
            memory_total_mib=_mib(row["memory.total"], "memory.total", number),
            memory_used_mib=_mib(row["memory.used"], "memory.used", number),
            memory_free_mib=_mib(row["memory.free"], "memory.free", number),
            driver_version=_value(row["driver_version"]),
            pci_bus_id=_value(row["pci.bus_id"]),
            compute_capability=_value(row.get("compute_cap", "")),
            mig_mode=_value(row.get("mig.mode.current", "")),
            unreported={name: value for name, value in row.items() if _value(value) is None},
        )
        for key, value in (("index", str(gpu.index)), ("uuid", gpu.uuid)):
            if value is None:
                continue
            if value in seen[key]:
                # Two GPUs under one index: a plan by index would put two replicas on one of them.
                raise ValueError("nvidia-smi output is malformed: GPU %s %s is listed twice (lines %d and %d)"
                                 % (key, value, seen[key][value], number))
            seen[key][value] = number
        gpus.append(gpu)
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
    fields = QUERY_FIELDS
    rc, out, err = run([nvidia_smi] + query_gpu_args(fields))
    if rc != 0 and _INVALID_FIELD in (out or "") + (err or ""):
        # A driver older than a NEWER_FIELDS column (those predate MIG too): ask without them.
        fields = BASE_FIELDS
        rc, out, err = run([nvidia_smi] + query_gpu_args(fields))
    if rc != 0:
        # Driver not loaded, no devices, ...: the host has no usable GPU; say why.
        facts.problem = "nvidia-smi failed (exit %d): %s" % (rc, _first_line(out, err))
        return facts
    try:
        facts.gpus = parse_query_gpu(out, fields)
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
