"""The smoke test of a CPU image probes its engine first, as deploy does on CPU hosts."""

from __future__ import annotations

from fm9g_deploy import layout
from fm9g_deploy.image.smoke import SmokeResult, probe_argv

IMAGE_ENV = {"FM9G_PYTHON": "/opt/fm9g/envs/fm9g-cpu/bin/python", "FM9G_MODEL_DIR": "/model", "FM9G_DTYPE": "auto",
             "FM9G_EXTRA_ARGS": "--enforce-eager", "FM9G_CPU_KVCACHE_SPACE_GIB": "2"}


def test_the_probe_runs_the_images_own_probe_with_its_settings():
    python = IMAGE_ENV["FM9G_PYTHON"]
    assert probe_argv(IMAGE_ENV, 1024, 600) == [
        python, layout.ENGINE_PROBE, "--python", python, "--model", "/model", "--dtype", "auto",
        "--fallback", "float32", "--timeout", "600", "--max-model-len", "1024", "--engine-arg=--enforce-eager",
        "--env", "VLLM_CPU_KVCACHE_SPACE=2"]


def test_an_image_without_extra_args_or_length_probes_with_the_defaults():
    argv = probe_argv({"FM9G_PYTHON": "/env/bin/python"}, None, 30.5)
    assert argv[4:10] == ["--model", "/model", "--dtype", "auto", "--fallback", "float32"]
    assert "--max-model-len" not in argv and not any(arg.startswith("--engine-arg") for arg in argv)
    assert argv[-2:] == ["--env", "VLLM_CPU_KVCACHE_SPACE=1"] and argv[argv.index("--timeout") + 1] == "30"


def test_the_manifest_records_the_dtype_served_and_why():
    result = SmokeResult(True, 12.34, dtype="float32", dtype_note="bfloat16 faulted: ...; float32 serves")
    assert result.to_dict() == {"passed": True, "seconds": 12.3, "problem": None, "dtype": "float32",
                                "dtype_note": "bfloat16 faulted: ...; float32 serves"}
