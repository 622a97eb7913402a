"""GPU hosts: torch in the env sees the GPUs the planner gave the host and each replica.

Skipped, with the reason, on hosts where the planner found no NVIDIA GPU (the CPU plan).
"""

from __future__ import annotations

import json

import pytest

from fm9g_deploy.verify_suite.support import expect, fail, last_line

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
