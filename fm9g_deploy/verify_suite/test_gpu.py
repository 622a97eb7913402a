"""GPU hosts: nvidia-smi shows the GPUs the plan was made for, each running replica has exactly
its planned GPUs in its environment, and torch in the env sees the GPUs of the host and each replica.

Skipped, with the reason, on hosts where the planner found no NVIDIA GPU (the CPU plan).
"""

from __future__ import annotations

import json

import pytest

from fm9g_deploy.gpu import QUERY_GPU_ARGS, parse_query_gpu
from fm9g_deploy.verify_suite.support import (
    expect,
    fail,
    last_line,
    one_line,
    process_environment,
    replica_process,
)

#: Counting devices initialises CUDA without making a context on them: safe beside running replicas.
PROBE = ("import json, torch; print('FM9G-GPU ' + json.dumps([torch.cuda.is_available(), torch.cuda.device_count(), "
         "torch.version.cuda]))")


def _skip_without_gpu(hostname, host_facts):
    if host_facts.gpu_count == 0:
        pytest.skip(f"{hostname} has no NVIDIA GPU (planned for the CPU)")


def _torch_devices(host, python, visible: str | None) -> tuple[bool, int, str | None]:
    # CUDA_DEVICE_ORDER=PCI_BUS_ID: the numbering nvidia-smi and the plan use.
    env = "env -u CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER=PCI_BUS_ID" if visible is None else \
        f"env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={visible}"
    result = host.run(f"{env} %s -c %s", python, PROBE)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FM9G-GPU ")]
    if not lines:
        fail(f"torch did not run in the env: {last_line(result.stderr) or f'exit {result.rc}'}")
    available, count, cuda = json.loads(lines[-1].split(" ", 1)[1])
    return available, count, cuda


def test_torch_sees_the_hosts_gpus(host, hostname, host_facts, facts):
    """torch sees the host's planned GPUs"""
    _skip_without_gpu(hostname, host_facts)
    available, count, cuda = _torch_devices(host, facts.env_python, None)
    expect(cuda, "the env's torch is a CPU-only build; the profile wants CUDA")
    expect(available, f"torch (CUDA {cuda}) sees no usable GPU; check the driver with nvidia-smi")
    planned = sorted({gpu for replica in host_facts.replicas for gpu in replica["gpus"]})
    needed = (max(planned) + 1) if planned else host_facts.gpu_count
    expect(count >= needed, f"torch sees {count} GPU(s), the plan uses GPU(s) {planned} of {host_facts.gpu_count}")


def test_replica_gpus_are_visible_to_torch(host, hostname, host_facts, replica, facts):
    """torch sees the replica's GPUs"""
    _skip_without_gpu(hostname, host_facts)
    gpus = replica["gpus"]
    expect(gpus, f"the plan gives replica {replica['index']} no GPU on a host with {host_facts.gpu_count}")
    available, count, _ = _torch_devices(host, facts.env_python, ",".join(map(str, gpus)))
    expect(available and count == len(gpus),
           f"with CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))} torch sees {count} GPU(s), "
           f"replica {replica['index']} needs {len(gpus)} (TP {replica['tensor_parallel_size']})")


# -- the live GPUs and the running replicas ---------------------------------------------------------

VISIBLE = "CUDA_VISIBLE_DEVICES"
ORDER = "CUDA_DEVICE_ORDER"
#: The numbering nvidia-smi and the plan use; CUDA's own default (FASTEST_FIRST) may differ.
PCI_BUS_ID = "PCI_BUS_ID"
#: nvidia-smi's exit status when the shell finds no such command.
NOT_FOUND = 127


def _live_gpus(host, hostname):
    """The host's GPUs as nvidia-smi lists them, read with the parser the planner's facts use."""
    result = host.run("LC_ALL=C nvidia-smi" + " %s" * len(QUERY_GPU_ARGS), *QUERY_GPU_ARGS)
    if result.rc == NOT_FOUND:
        fail(f"nvidia-smi is not on {hostname}'s PATH: is the NVIDIA driver installed?")
    if result.rc != 0:
        fail(f"nvidia-smi failed on {hostname} (exit {result.rc}): "
             f"{one_line(result.stdout) or last_line(result.stderr) or 'no output'}")
    try:
        return parse_query_gpu(result.stdout)
    except ValueError as exc:
        fail(f"cannot read nvidia-smi's answer on {hostname}: {one_line(str(exc))}")


def test_live_gpus_match_the_plan(host, hostname, host_facts):
    """nvidia-smi on the host shows the GPUs the plan was made for"""
    _skip_without_gpu(hostname, host_facts)
    gpus = _live_gpus(host, hostname)
    indexes = [gpu.index for gpu in gpus]
    shown = ", ".join(f"{gpu.index}: {gpu.name}" for gpu in gpus[:8]) + (" ..." if len(gpus) > 8 else "")
    expect(len(gpus) == host_facts.gpu_count,
           f"nvidia-smi shows {len(gpus)} GPU(s) on {hostname} ({shown or 'none'}), the plan was made for "
           f"{host_facts.gpu_count}: a GPU is gone or was added since the plan; check `nvidia-smi` and the "
           "kernel log, then plan again")
    expect(len(set(indexes)) == len(indexes), f"nvidia-smi lists GPU index(es) twice on {hostname}: {indexes}")
    for replica in host_facts.replicas:
        missing = [gpu for gpu in replica["gpus"] if gpu not in indexes]
        expect(not missing, f"replica {replica['index']} is planned on GPU(s) {', '.join(map(str, missing))}, "
               f"which nvidia-smi does not show on {hostname} (it shows {', '.join(map(str, indexes)) or 'none'})")


@pytest.mark.journal("replicas")
def test_replica_process_has_its_gpus(host, hostname, host_facts, replica, facts):
    """the running replica sees exactly its planned GPUs"""
    _skip_without_gpu(hostname, host_facts)
    if facts.serve_mode == "container":
        pytest.skip("serve_mode container: the replica containers' GPUs are checked by the container checks")
    index, port, gpus = replica["index"], replica["port"], replica["gpus"]
    expect(gpus, f"the plan gives replica {index} no GPU on a host with {host_facts.gpu_count}")
    pid = replica_process(host, replica)
    who = f"replica {index} (port {port}, pid {pid})"
    # Only the two variables are read back: the rest of the environment holds the API key.
    env, problem = process_environment(host, pid, (VISIBLE, ORDER))
    if env is None:
        fail(f"cannot read the environment of {who}: {problem}")
    planned = ",".join(map(str, gpus))
    visible = env.get(VISIBLE)
    expect(visible is not None, f"{who} runs without {VISIBLE}: it would use every GPU of the host")
    expect(visible == planned, f"{who} runs with {VISIBLE}={visible or '(empty)'}, the plan gives it GPU(s) {planned}")
    order = env.get(ORDER)
    expect(order == PCI_BUS_ID,
           f"{who} runs with {f'{ORDER}={order}' if order is not None else f'no {ORDER}'}, not {PCI_BUS_ID}: "
           f"CUDA may number the GPUs unlike nvidia-smi and the plan, so {VISIBLE}={planned} may name other GPUs")
