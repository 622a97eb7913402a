"""The guide's GPU stack rendered for real: `provision --check` of the cuda121 profile.

There is no GPU and no CUDA wheel here, so the env is not built; but Ansible runs the real
roles in check mode against this machine (local connection, nothing changed) and lists the
exact commands a GPU host would run: the Miniforge install, `conda create` of the guide's env
and pip with every hash required, offline from the mirror.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fm9g_deploy.artifacts.lock import LockedArtifact, load_lock
from fm9g_deploy.artifacts.publish import requirements_text
from fm9g_deploy.profiles import load_profile
from tests.unit.check_mode_mirror import check_mode_cache, provision_check

TORCH_CU121_SHA256 = "0a12aa9aa6bc442dff8823ac8b48d991fd0771562eaa38593f9c8196d65f7007"


FAMILY = "fm9g-4b-7b-70b"


def lock_with_operator_wheel():
    """The committed cuda121 lock plus the operator's vLLM wheel, as `artifacts lock` records it
    once the wheel is registered (its hash here is a stand-in: the wheel is not public), and the
    env's conda packages, as `artifacts lock` records them where conda-forge is reachable (the
    committed lock was made where it is not: these are conda's recorded answer, fake hashes)."""
    from tests.unit.test_conda_lock import with_conda_packages

    lock = load_lock("cuda121")
    vllm = LockedArtifact(name="vllm", version="0.5.0.dev0+cu122", url=None, sha256="e" * 64, size=1,
                          filename=load_profile("cuda121").vllm.filename, kind="operator-wheel",
                          sets=[FAMILY], family=FAMILY)
    artifacts = [a.model_copy(update={"sets": [*a.sets, FAMILY]}) if a.kind == "wheel" else a
                 for a in lock.artifacts]
    lock = lock.model_copy(update={"sets": {**lock.sets, FAMILY: "base plus the FM9G 4B/7B/70B vLLM wheel"},
                                   "artifacts": [*artifacts, vllm], "unregistered_families": []})
    return with_conda_packages(lock)


@pytest.fixture(scope="module")
def gpu_check_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-render")
    lock = lock_with_operator_wheel()
    cache, set_name = check_mode_cache(root, "cuda121", lock)
    installer = next(a for a in lock.installers() if a.name.startswith("miniforge"))
    stand_in = cache.path_for(installer.sha256, installer.filename)  # check mode only asks the mirror for it
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\n")
    result, would_run, _, mirror = provision_check(root, "cuda121", lock, cache, set_name)
    return result, would_run, lock, set_name, mirror


def test_check_mode_succeeds_and_changes_nothing_here(gpu_check_run):
    result, would_run, _, _, _ = gpu_check_run
    assert result.ok, result.problems
    assert len(would_run) == 3
    assert not Path("/opt/fm9g/envs/fm-9g").exists()


def test_conda_env_is_the_guides_created_offline_from_the_locked_packages(gpu_check_run):
    result, would_run, lock, _, _ = gpu_check_run
    installer, create = (shlex.split(line) for line in would_run[:2])
    assert installer[:2] == ["/bin/bash", "/opt/fm9g/miniforge-installer.sh"] and installer[2:] == ["-b", "-p", "/opt/fm9g/conda"]
    assert create == ["/opt/fm9g/conda/bin/conda", "create", "--yes", "--quiet", "--offline", "--prefix",
                      "/opt/fm9g/envs/fm-9g", "--file", "/opt/fm9g/conda/fm9g-pkgs/fm-9g.explicit.txt"]
    assert not any("conda-forge" in line or "--channel" in line for line in would_run)
    # Check mode got through the package downloads (skipped: the conda root is not there) and the spec.
    assert result.ok and len(lock.conda_packages()) == 4


def test_pip_installs_offline_with_every_hash_required(gpu_check_run):
    _, would_run, _, set_name, mirror = gpu_check_run
    pip = shlex.split(would_run[2])
    assert pip[:4] == ["/opt/fm9g/envs/fm-9g/bin/python", "-m", "pip", "install"]
    for flag in ("--no-index", "--no-deps", "--require-hashes", "--only-binary=:all:"):
        assert flag in pip
    assert pip[pip.index("--find-links") + 1] == f"{mirror}/published/cuda121/{set_name}/"
    assert pip[pip.index("--trusted-host") + 1] == "127.0.0.1"
    assert pip[pip.index("--requirement") + 1] == "/opt/fm9g/envs/fm-9g/fm9g-requirements.txt"


def test_the_requirements_pip_reads_hold_the_guides_pins_with_hashes(gpu_check_run):
    _, _, lock, set_name, _ = gpu_check_run
    lines = [line for line in requirements_text(lock, set_name, lock.python_files(set_name)).splitlines()
             if not line.startswith("#")]
    assert all(" --hash=sha256:" in line for line in lines)
    pins = {line.split("==")[0]: line for line in lines}
    assert pins["torch"] == f"torch==2.3.0+cu121 --hash=sha256:{TORCH_CU121_SHA256}"
    assert pins["transformers"].startswith("transformers==4.44.0 ")
    assert pins["vllm"].startswith("vllm==0.5.0.dev0+cu122 ")
    for name in ("accelerate", "jsonschema", "pytrie", "sentencepiece", "protobuf", "datamodel-code-generator"):
        assert any(key.lower().replace("_", "-") == name for key in pins), name


def test_provision_names_locked_conda_packages_missing_from_the_cache(tmp_path, monkeypatch):
    from fm9g_deploy.config import parse_config
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.hostvars import load_stack

    lock = lock_with_operator_wheel()
    cache, _ = check_mode_cache(tmp_path, "cuda121", lock)
    monkeypatch.setattr("fm9g_deploy.artifacts.lock.load_lock", lambda profile=None, path=None: lock)
    config = parse_config(f"model:\n  name: fm9g-4b\nprofile: cuda121\nmirror:\n  url: http://mirror:8080\n"
                          f"  cache_dir: {cache.root}\n")
    installer = lock.installers()[0]
    with pytest.raises(UserError, match=rf"^{re.escape(installer.filename)} and 4 more of the cuda121 lock are not "
                                        r"in the artifact cache .*; run `fm9g-deploy artifacts fetch --profile cuda121"):
        load_stack(config)
    for artifact in lock.installers() + lock.conda_packages():  # fetched: the stack loads
        stored = cache.path_for(artifact.sha256, artifact.filename)
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(b"stand-in")
    assert load_stack(config).lock is lock
