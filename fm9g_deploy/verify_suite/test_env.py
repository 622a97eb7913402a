"""The env: it exists, runs the profile's Python, imports the locked stack, and pip finds it whole."""

from __future__ import annotations

import json
import re

import pytest

from fm9g_deploy.verify_suite.facts import CHECKED_PACKAGES
from fm9g_deploy.verify_suite.support import expect, fail, last_line

#: Runs in the env: its Python version, and per package the installed version and whether it imports.
PROBE = r"""
import importlib, importlib.metadata as metadata, json, sys
report = {"python": "%d.%d.%d" % sys.version_info[:3], "packages": {}}
for module, dist in json.loads(sys.argv[1]).items():
    entry = {"module": module, "dist": dist}
    try:
        entry["version"] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        entry["version"] = None
    try:
        importlib.import_module(module)
        entry["error"] = None
    except BaseException as exc:
        entry["error"] = "%s: %s" % (type(exc).__name__, (str(exc).splitlines() or [""])[0])
    report["packages"][module] = entry
print("FM9G-PROBE " + json.dumps(report))
"""

_PROBES: dict[str, dict] = {}


@pytest.fixture
def probe(host, facts, hostname) -> dict:
    """One run of PROBE per host (importing vLLM takes seconds): the checks below share it."""
    if hostname not in _PROBES:
        wanted = json.dumps({CHECKED_PACKAGES[role]: package.dist for role, package in facts.packages.items()})
        result = host.run("%s -c %s %s", facts.env_python, PROBE, wanted)
        lines = [line for line in result.stdout.splitlines() if line.startswith("FM9G-PROBE ")]
        why = last_line(result.stderr) or f"exit {result.rc}"
        _PROBES[hostname] = (json.loads(lines[-1].split(" ", 1)[1]) if lines else
                             {"failed": f"{facts.env_python} did not run: {why}"})
    report = _PROBES[hostname]
    if "failed" in report:
        fail(report["failed"])
    return report


def test_env_exists(host, facts):
    """env exists"""
    expect(host.file(facts.env_prefix).is_directory,
           f"{facts.env_prefix} does not exist; run `fm9g-deploy provision`")
    python = host.file(facts.env_python)
    expect(python.exists and python.mode & 0o111, f"{facts.env_python} is missing or not executable")


def test_env_python_is_the_profiles(probe, facts):
    """Python is the profile's version"""
    version = probe["python"]
    wanted = facts.python
    matches = version == wanted if wanted.count(".") == 2 else version.rsplit(".", 1)[0] == wanted
    expect(matches, f"the env runs Python {version}, the profile {facts.profile} wants {wanted}")


@pytest.mark.parametrize("role", sorted(CHECKED_PACKAGES))
def test_package_imports_at_the_locked_version(probe, facts, role):
    """imports at the locked version"""
    locked = facts.packages[role]
    entry = probe["packages"][CHECKED_PACKAGES[role]]
    expect(entry["version"] is not None, f"{locked.dist} is not installed in the env (the lock has {locked.version})")
    expect(_same_version(entry["version"], locked.version),
           f"{locked.dist} {entry['version']} is installed, the lock has {locked.version}; run `fm9g-deploy provision`")
    expect(entry["error"] is None, f"import {entry['module']} fails: {entry['error']}")


def _same_version(installed: str, locked: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(installed) == Version(locked)
    except InvalidVersion:
        return installed == locked


_PIP_MISSING = re.compile(r"requires (\S+?),? which is not installed", re.IGNORECASE)


def _canonical(name: str) -> str:  # noqa: D103
    return re.sub(r"[-_.]+", "-", name).lower()


def test_pip_check_finds_no_broken_requirement(host, facts):
    """pip check finds no broken requirement"""
    result = host.run("%s -m pip check --disable-pip-version-check", facts.env_python)
    excluded = {_canonical(name) for name in facts.excluded}
    problems = []
    for line in result.stdout.splitlines():
        missing = _PIP_MISSING.search(line)
        if line.strip() and not (missing and _canonical(missing.group(1)) in excluded):
            problems.append(line.strip())
    if result.rc != 0 and not problems and not result.stdout.strip():
        fail(f"pip check did not run: {last_line(result.stderr) or f'exit {result.rc}'}")
    if problems:
        fail(f"pip check: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def test_env_holds_the_locked_requirements(host, facts):
    """env holds the locked requirements"""
    if not facts.lock_sha256:
        pytest.skip("the published requirements are not in this machine's artifact cache; nothing to compare")
    record = host.file(f"{facts.env_prefix}/fm9g-requirements.sha256")
    expect(record.exists, f"{record.path} is missing: the env was not installed by `fm9g-deploy provision`")
    installed = record.content_string.strip()
    expect(installed == facts.lock_sha256,
           f"the env holds requirements {installed[:12]}, the lock publishes {facts.lock_sha256[:12]}; "
           "run `fm9g-deploy provision`")
