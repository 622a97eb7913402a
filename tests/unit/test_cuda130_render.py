"""The upstream-vLLM GPU stack rendered for real: `provision --check` of the cuda130 profile.

As for cuda121 (test_gpu_profile_render.py): no GPU and no CUDA wheel here, so Ansible runs the
real roles in check mode against this machine (local connection, nothing changed) and lists the
commands a GPU host would run: a venv on the host's Python 3.12, and pip with every hash required,
offline from the mirror. The host's Python is a test double (a script that answers as Python 3.12
does to the role's one question), so the render does not depend on which Pythons this machine has.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from fm9g_deploy.artifacts.lock import load_lock
from fm9g_deploy.artifacts.publish import requirements_text
from tests.unit.check_mode_mirror import check_mode_cache, provision_check

#: Test double of a host's python3.12: the role asks it for its version and whether the venv exists.
PYTHON_312_DOUBLE = "#!/bin/sh\n# test double: a host's Python 3.12, as the venv role asks it\necho 3.12\necho False\n"


@pytest.fixture(scope="module")
def cuda130_check_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda130-render")
    lock = load_lock("cuda130")
    cache, set_name = check_mode_cache(root, "cuda130", lock)
    python = root / "python3.12"
    python.write_text(PYTHON_312_DOUBLE)
    python.chmod(0o755)
    result, would_run, values, mirror = provision_check(root, "cuda130", lock, cache, set_name,
                                                        fm9g_python_env_base_python=str(python))
    return result, would_run, values, python, set_name, mirror


def test_the_model_is_served_as_minicpm_by_upstream_vllm(cuda130_check_run):
    _, _, values, _, _, _ = cuda130_check_run
    assert values["fm9g_model_serve_as"] == "MiniCPMForCausalLM"
    assert values["fm9g_model_expected_shape"]["num_layers"] == 62
    assert values["fm9g_python_env_manager"] == "venv" and values["fm9g_python_env_python"] == "3.12"


def test_a_venv_on_the_hosts_python_then_pip_offline_with_every_hash(cuda130_check_run):
    result, would_run, _, python, set_name, mirror = cuda130_check_run
    assert result.ok, result.problems
    assert len(would_run) == 2, would_run
    assert shlex.split(would_run[0]) == [str(python), "-m", "venv", "/opt/fm9g/envs/fm9g-vllm025"]
    pip = shlex.split(would_run[1])
    assert pip[:4] == ["/opt/fm9g/envs/fm9g-vllm025/bin/python", "-m", "pip", "install"]
    for flag in ("--no-index", "--no-deps", "--require-hashes", "--only-binary=:all:"):
        assert flag in pip
    # The base install set is published at the profile's folder itself.
    assert set_name == "base" and pip[pip.index("--find-links") + 1] == f"{mirror}/published/cuda130/"
    assert not Path("/opt/fm9g/envs/fm9g-vllm025").exists()


def test_the_requirements_hold_upstream_vllm_and_its_torch_with_hashes(cuda130_check_run):
    lock = load_lock("cuda130")
    lines = [line for line in requirements_text(lock, "base", lock.python_files("base")).splitlines()
             if not line.startswith("#")]
    assert all(" --hash=sha256:" in line for line in lines)
    pins = {line.split("==")[0].lower(): line.split(" ")[0] for line in lines}
    assert pins["vllm"] == "vllm==0.25.0" and pins["torch"] == "torch==2.11.0"
