"""The image's entry point starts vLLM exactly as the systemd replica unit does, and takes the API
key from a mounted file or the environment, never from its command line."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from fm9g_deploy.image.render import CONTEXT_SOURCE
from fm9g_deploy.profiles import load_profile
from fm9g_deploy.replica_spec import expand
from tests.unit.role_render import replica_spec

ENTRYPOINT = CONTEXT_SOURCE / "entrypoint.sh"


def supervised(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(the supervisor's options, vLLM's argv) of a replica's command line."""
    split = argv.index("--")
    options = argv[2:split]
    assert argv[1].endswith("/fm9g_replica_supervisor.py")
    return dict(zip(options[::2], options[1::2])), argv[split + 1:]


def entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], **env})


@pytest.mark.parametrize("accelerator,profile", [("cpu", "cpu"), ("cuda", "cuda121")])
def test_entrypoint_alone_runs_the_same_command_as_a_replica_spec(accelerator, profile):
    """`docker run IMAGE` with FM9G_* settings (the image used by hand) starts what fm9g-deploy's
    replica spec starts in a container."""
    loaded = load_profile(profile)
    spec = replica_spec(profile, "{serve_mode: container, drain_timeout_s: 45}",
                        {"index": 0, "port": 8100, "tensor_parallel_size": 1, "gpus": [0],
                         "gpu_memory_utilization": 0.85, "max_model_len": 4096})
    drain = [loaded.vllm_drain_flag, "45"] if loaded.vllm_drain_flag else []
    python = spec["argv"][0]
    result = entrypoint("--print-argv", env={
        "FM9G_PYTHON": python, "FM9G_HOST": "127.0.0.1", "FM9G_MODEL_DIR": "/model",
        "FM9G_SERVED_MODEL_NAME": "9g", "FM9G_EXTRA_ARGS": " ".join(list(loaded.vllm_args) + drain),
        "FM9G_SUPERVISOR_ARGS": "--crash-limit 5 --crash-window 600 --stop-timeout 60",
        **{k: v for k, v in spec["environment"].items() if k.startswith("FM9G_")},
    })
    assert result.returncode == 0, result.stderr
    spec_supervisor, spec_vllm = supervised(expand(spec["argv"], spec["environment"]))
    image_supervisor, image_vllm = supervised(result.stdout.splitlines())
    assert image_vllm == spec_vllm
    assert image_supervisor == spec_supervisor == {
        "--state-file": "/var/lib/fm9g/state/replica.state.json", "--textfile": "/var/lib/fm9g/state/replica.prom",
        "--replica": "0", "--port": "8100", "--crash-limit": "5",
        "--crash-window": "600", "--stop-timeout": "60", "--give-up-exit-code": "0"}
    assert "--enforce-eager" in spec_vllm if profile == "cpu" else "--enforce-eager" not in spec_vllm
    assert spec_vllm[-2:] == drain if drain else "--shutdown-timeout" not in spec_vllm
    assert spec["environment"].get("VLLM_CPU_KVCACHE_SPACE") == ("1" if accelerator == "cpu" else None)


def test_image_defaults_give_the_guides_launch_line():
    dockerfile = (CONTEXT_SOURCE / "Dockerfile").read_text()
    env_block = re.search(r"^ENV (FM9G_PYTHON=.*?)\n\n", dockerfile, re.M | re.S).group(1)
    defaults = dict(re.findall(r"(\w+)=(\S*)", env_block.replace("\\\n", " ")))
    defaults = {k: v.strip('"') for k, v in defaults.items() if k.startswith("FM9G_")}
    defaults.update(FM9G_PYTHON="python", FM9G_EXTRA_ARGS="")
    argv = entrypoint("--print-argv", env=defaults).stdout.splitlines()
    joined = " ".join(argv)
    for part in ("--tokenizer-mode auto", "--dtype auto", "--trust-remote-code", "--served-model-name 9g",
                 "--gpu-memory-utilization 0.9", "--port 8020", "--tensor-parallel-size 1", "--model /model"):
        assert part in joined
    assert "--max-model-len" not in argv  # unset: vLLM takes the model's own


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """Stands in for the env's python (no vLLM here): prints its arguments and the key it got."""
    script = tmp_path / "python"
    script.write_text('#!/bin/bash\necho "ARGS $*"\necho "KEY ${VLLM_API_KEY:-}"\n'
                      'echo "KV ${VLLM_CPU_KVCACHE_SPACE:-unset}"\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("content", ["s3cret-key\n", "# managed\nVLLM_API_KEY=s3cret-key\n"])
def test_key_comes_from_the_mounted_file_and_never_from_argv(fake_python, tmp_path, content):
    key_file = tmp_path / "key"
    key_file.write_text(content)
    result = entrypoint(env={"FM9G_PYTHON": str(fake_python), "FM9G_API_KEY_FILE": str(key_file),
                             "FM9G_ACCELERATOR": "cpu", "FM9G_CPU_KVCACHE_SPACE_GIB": "2"})
    assert result.returncode == 0, result.stderr
    assert "KEY s3cret-key" in result.stdout
    args_line = next(line for line in result.stdout.splitlines() if line.startswith("ARGS"))
    assert "s3cret" not in args_line and "--api-key" not in args_line
    assert "KV 2" in result.stdout


def test_key_from_the_environment_wins_and_gpu_images_get_no_cpu_kv_setting(fake_python, tmp_path):
    result = entrypoint(env={"FM9G_PYTHON": str(fake_python), "VLLM_API_KEY": "from-env",
                             "FM9G_API_KEY_FILE": str(tmp_path / "absent"), "FM9G_ACCELERATOR": "cuda"})
    assert result.returncode == 0
    assert "KEY from-env" in result.stdout and "KV unset" in result.stdout


def test_no_key_refuses_to_start_with_the_fix(fake_python, tmp_path):
    result = entrypoint(env={"FM9G_PYTHON": str(fake_python), "FM9G_API_KEY_FILE": str(tmp_path / "absent")})
    assert result.returncode == 78
    assert "no API key; mount a key file at" in result.stderr
    assert "ARGS" not in result.stdout


def test_extra_arguments_after_the_image_go_to_vllm(fake_python):
    result = entrypoint("--max-num-seqs", "8", env={"FM9G_PYTHON": str(fake_python), "VLLM_API_KEY": "k"})
    assert result.stdout.splitlines()[0].endswith("--max-num-seqs 8")
