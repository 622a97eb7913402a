"""`serving.nvlink_multicast: false`: every replica on a GPU runs with NVLink multicast off.

What the device tool's multi-GPU machines require (NCCL_NVLS_ENABLE=0 and the rest in every
process) and what vLLM 0.25 would otherwise do at TP > 1 on Hopper: all-reduce through torch's
symmetric memory (multicast at TP 4/6/8, on by default) and the all-reduce+RMSNorm fusion through
FlashInfer, whose default backend allocates NVSwitch multicast memory. The variable names and
defaults were read from vLLM 0.25.0's vllm/envs.py and vllm/config/vllm.py.
"""

from __future__ import annotations

import json
import re

import pytest

from fm9g_deploy.config import parse_config
from fm9g_deploy.replica_spec import MULTICAST_OFF_ENVIRONMENT, expand
from tests.unit.role_render import PLANNED, render_role_template, replica_spec

NCCL_TORCH_NVSHMEM = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
VLLM_PATHS = {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0", "VLLM_USE_NCCL_SYMM_MEM": "0", "VLLM_ALLREDUCE_USE_FLASHINFER": "0",
              "VLLM_FLASHINFER_ALLREDUCE_BACKEND": "trtllm"}


def systemd_split(command: str) -> list[str]:
    """An ExecStart= value as systemd splits it (systemd.service, "Command lines"): words apart by
    spaces, double-quoted words with backslash escapes, `$$` for `$` and `%%` for `%`."""
    words, i = [], 0
    while i < len(command):
        if command[i] == " ":
            i += 1
            continue
        word = []
        if command[i] == '"':
            i += 1
            while command[i] != '"':
                if command[i] == "\\":
                    i += 1
                word.append(command[i])
                i += 1
            i += 1
        else:
            while i < len(command) and command[i] != " ":
                word.append(command[i])
                i += 1
        words.append("".join(word).replace("$$", "$").replace("%%", "%"))
    return words


def test_the_default_leaves_vllms_paths_as_they_are():
    spec = replica_spec("cuda130", "{tensor_parallel_size: 2}", PLANNED)
    assert not set(NCCL_TORCH_NVSHMEM) & set(spec["environment"])
    assert "--compilation-config" not in spec["argv"]
    assert parse_config("").serving.nvlink_multicast is True


def test_off_puts_every_switch_into_the_replica_and_turns_the_fusion_pass_off():
    spec = replica_spec("cuda130", "{nvlink_multicast: false}", {**PLANNED, "tensor_parallel_size": 4, "gpus": [0, 1, 2, 3]})
    assert {**NCCL_TORCH_NVSHMEM, **VLLM_PATHS}.items() <= spec["environment"].items()
    assert MULTICAST_OFF_ENVIRONMENT == {**NCCL_TORCH_NVSHMEM, **VLLM_PATHS}
    argv = spec["argv"]
    compilation = json.loads(argv[argv.index("--compilation-config") + 1])
    assert compilation == {"pass_config": {"fuse_allreduce_rms": False}}
    # The unit's drop-in carries the same words systemd will hand vLLM, JSON intact.
    drop_in = render_role_template("spec.conf.j2", _fm9g_replica_spec=spec)
    exec_start = re.findall(r"^ExecStart=(.+)$", drop_in, re.M)[-1]
    assert expand(systemd_split(exec_start), spec["environment"]) == expand(argv, spec["environment"])
    environment = render_role_template("replica.env.j2", _fm9g_replica_spec=spec)
    for name, value in MULTICAST_OFF_ENVIRONMENT.items():
        assert f"{name}={value}\n" in environment


def test_the_guides_fork_gets_the_environment_but_no_option_it_does_not_know():
    spec = replica_spec("cuda121", "{nvlink_multicast: false}")
    assert MULTICAST_OFF_ENVIRONMENT.items() <= spec["environment"].items()
    assert "--compilation-config" not in spec["argv"]  # vLLM 0.5 has no such option


@pytest.mark.parametrize("serving", ["{nvlink_multicast: false}", "{nvlink_multicast: false, serve_mode: container}"])
def test_cpu_replicas_are_untouched(serving):
    spec = replica_spec("cpu", serving)
    assert not set(MULTICAST_OFF_ENVIRONMENT) & set(spec["environment"])
    assert "--compilation-config" not in spec["argv"]


def test_a_wrong_value_is_refused_in_one_line(tmp_path):
    from tests.conftest import run_cli

    config = tmp_path / "fm9g.yml"
    config.write_text("serving:\n  nvlink_multicast: maybe\n")
    result = run_cli("config", "check", "--config", str(config))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "nvlink_multicast" in result.stderr
