"""The install the README advertises, as a new user gets it: no checkout.

The sdist is built from this checkout, the wheel from the sdist (so both must carry the Ansible
content), the wheel installed into a clean venv outside the checkout, and the CLI driven from an
empty directory with a PATH that holds only that venv and the system's programs. It plans and
checks the session's provisioned sandbox, then verifies the deployed one with the suite it ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.integration.conftest import parse_changed

CONTENT = ("ansible.cfg", "playbooks/provision.yml", "roles/fm9g_replica/tasks/main.yml",
           "library/fm9g_gpu_facts.py", "module_utils/fm9g_layout.py", "locks/cpu.json",
           "images/vllm/Dockerfile", "inventory/fm9g.yml")


def _run(argv, *, cwd, env=None, timeout=600):
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv[:3]}: {result.stdout[-1500:]}{result.stderr[-2500:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(fm9g-deploy program, its environment, an empty working directory) of a clean install."""
    work = tmp_path_factory.mktemp("installed-wheel")
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(work)!r})"],
         cwd=PROJECT_ROOT)
    sdist = next(work.glob("fm9g_deploy-*.tar.gz"), None) or next(work.glob("fm9g-deploy-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "sdist", filter="data")
    (source,) = (work / "sdist").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)],
         cwd=work, timeout=900)
    (wheel,) = (work / "dist").glob("*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
         cwd=work, timeout=900)
    empty = work / "empty"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    return venv / "bin" / "fm9g-deploy", env, empty, venv


def test_the_installed_package_finds_its_content_inside_itself(installed):
    program, env, empty, venv = installed
    probe = _run([str(venv / "bin/python"), "-c", "from fm9g_deploy import paths; print(paths.CONTENT_ROOT)"],
                 cwd=empty, env=env)
    root = Path(probe.stdout.strip())
    assert root.is_relative_to(venv) and root.name == "_content", root
    missing = [entry for entry in CONTENT if not (root / entry).is_file()]
    assert not missing, f"the wheel lacks {missing}"
    assert not (root / "module_utils/fm9g_layout.py").is_symlink()
    assert list(empty.iterdir()) == []


def test_plan_from_an_empty_directory(installed, sandbox_inventory, test_config):
    program, env, empty, _ = installed
    result = _run([str(program), "plan", "-i", str(sandbox_inventory), "--json"], cwd=empty, env=env)
    assert '"host1"' in result.stdout and '"host2"' in result.stdout


def test_provision_check_from_an_empty_directory(installed, sandbox_inventory, provisioned):
    program, env, empty, _ = installed
    result = _run([str(program), "provision", "-i", str(sandbox_inventory), "--check"], cwd=empty, env=env,
                  timeout=900)
    assert parse_changed(result.stdout) == {"host1": 0, "host2": 0}, result.stdout[-2000:]


def test_verify_with_the_shipped_suite_from_an_empty_directory(installed, deployed_sandbox, tmp_path):
    program, env, empty, _ = installed
    inventory, _ = deployed_sandbox
    junit = tmp_path / "verify.xml"
    result = _run([str(program), "verify", "-i", str(inventory), "--junitxml", str(junit)], cwd=empty, env=env,
                  timeout=900)
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors")}
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0, (counts, result.stdout[-2000:])


def test_init_and_doctor_from_the_installed_package(installed, sandbox_inventory, tmp_path):
    import json

    program, env, _, _ = installed
    site = tmp_path / "site"
    _run([str(program), "init", str(site)], cwd=tmp_path, env=env)
    assert sorted(p.name for p in site.iterdir()) == ["artifacts", "fm9g.yml", "hosts.yml"]
    result = subprocess.run([str(program), "doctor", "-i", str(sandbox_inventory), "--min-free-gib", "1", "--json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert result.returncode == 0, [c for c in checks.values() if not c["ok"]]
    assert checks["ansible content"]["ok"] and "/_content" in checks["ansible content"]["detail"]
    assert checks["hosts"]["ok"] and "answered Ansible" in checks["hosts"]["detail"]
