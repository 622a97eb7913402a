"""A conda profile's env packages: locked by conda itself on the control node (the dry run's JSON
turned into artifacts in link order), and handed to the hosts as mirror URLs, never a channel."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.conda import conda_artifacts, conda_env, dry_run_argv, failure, lock_conda_packages
from fm9g_deploy.artifacts.lock import Lock, LockedArtifact, load_lock, lock_text
from fm9g_deploy.config import parse_config
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.hostvars import Stack, provision_vars
from fm9g_deploy.profiles import Profile, load_profile
from tests.fixtures.artifacts.wheels import sha256_of
from tests.unit.check_mode_mirror import MODEL, check_mode_cache

MIRROR = "http://mirror.example:8080"

# Recorded-shape test input: the shape of `conda create --dry-run --json --platform linux-64
# python=3.10.16 pip` from conda-forge (conda 25.x), cut to four packages. Hashes, sizes and md5s
# are fake. FETCH holds each package's channel record (conda lists them by name); LINK holds only
# name/version/build, in the order conda links them (python before pip, which needs it).
DRY_RUN = {
    "actions": {
        "FETCH": [
            {"arch": None, "build": "conda_forge", "build_number": 0,
             "channel": "https://conda.anaconda.org/conda-forge/linux-64", "constrains": [], "depends": [],
             "fn": "_libgcc_mutex-0.1-conda_forge.tar.bz2", "license": "None", "md5": "1" * 32,
             "name": "_libgcc_mutex", "platform": None, "sha256": "a" * 64, "size": 2562,
             "subdir": "linux-64", "timestamp": 1578324546067,
             "url": "https://conda.anaconda.org/conda-forge/linux-64/_libgcc_mutex-0.1-conda_forge.tar.bz2",
             "version": "0.1"},
            {"arch": "x86_64", "build": "h767d61c_2", "build_number": 2,
             "channel": "https://conda.anaconda.org/conda-forge/linux-64", "constrains": [],
             "depends": ["__glibc >=2.17,<3.0.a0", "_openmp_mutex >=4.5"],
             "fn": "libgcc-14.2.0-h767d61c_2.conda", "license": "GPL-3.0-only WITH GCC-exception-3.1",
             "md5": "2" * 32, "name": "libgcc", "platform": "linux", "sha256": "b" * 64, "size": 847885,
             "subdir": "linux-64", "timestamp": 1740240653082,
             "url": "https://conda.anaconda.org/conda-forge/linux-64/libgcc-14.2.0-h767d61c_2.conda",
             "version": "14.2.0"},
            {"arch": None, "build": "pyh8b19718_0", "build_number": 0,
             "channel": "https://conda.anaconda.org/conda-forge/noarch", "constrains": [],
             "depends": ["python >=3.9,<3.13.0a0", "setuptools", "wheel"], "fn": "pip-25.1.1-pyh8b19718_0.conda",
             "license": "MIT", "md5": "3" * 32, "name": "pip", "noarch": "python", "platform": None,
             "sha256": "c" * 64, "size": 1242995, "subdir": "noarch", "timestamp": 1746249983238,
             "url": "https://conda.anaconda.org/conda-forge/noarch/pip-25.1.1-pyh8b19718_0.conda",
             "version": "25.1.1"},
            {"arch": "x86_64", "build": "he725a3c_1_cpython", "build_number": 1,
             "channel": "https://conda.anaconda.org/conda-forge/linux-64", "constrains": ["python_abi 3.10.* *_cp310"],
             "depends": ["libgcc >=13", "libzlib >=1.3.1,<2.0a0"], "fn": "python-3.10.16-he725a3c_1_cpython.conda",
             "license": "Python-2.0", "md5": "4" * 32, "name": "python", "platform": "linux",
             "sha256": "d" * 64, "size": 25199631, "subdir": "linux-64", "timestamp": 1733407596216,
             "url": "https://conda.anaconda.org/conda-forge/linux-64/python-3.10.16-he725a3c_1_cpython.conda",
             "version": "3.10.16"},
        ],
        "LINK": [
            {"base_url": "https://conda.anaconda.org/conda-forge", "build_number": 0, "build_string": "conda_forge",
             "channel": "conda-forge", "dist_name": "_libgcc_mutex-0.1-conda_forge", "name": "_libgcc_mutex",
             "platform": "linux-64", "version": "0.1"},
            {"base_url": "https://conda.anaconda.org/conda-forge", "build_number": 2, "build_string": "h767d61c_2",
             "channel": "conda-forge", "dist_name": "libgcc-14.2.0-h767d61c_2", "name": "libgcc",
             "platform": "linux-64", "version": "14.2.0"},
            {"base_url": "https://conda.anaconda.org/conda-forge", "build_number": 1,
             "build_string": "he725a3c_1_cpython", "channel": "conda-forge",
             "dist_name": "python-3.10.16-he725a3c_1_cpython", "name": "python", "platform": "linux-64",
             "version": "3.10.16"},
            {"base_url": "https://conda.anaconda.org/conda-forge", "build_number": 0, "build_string": "pyh8b19718_0",
             "channel": "conda-forge", "dist_name": "pip-25.1.1-pyh8b19718_0", "name": "pip", "platform": "noarch",
             "version": "25.1.1"},
        ],
        "PREFIX": "/tmp/fm9g-conda-lock-x/env",
    },
    "dry_run": True,
    "prefix": "/tmp/fm9g-conda-lock-x/env",
    "success": True,
}
LINK_ORDER = ["_libgcc_mutex", "libgcc", "python", "pip"]


# -- the dry run's JSON -> artifacts ----------------------------------------------------------

def test_dry_run_becomes_conda_artifacts_in_link_order_with_their_channel_records():
    artifacts = conda_artifacts(DRY_RUN)
    assert [a.name for a in artifacts] == LINK_ORDER  # not FETCH's order (pip before python)
    python = artifacts[2]
    assert (python.kind, python.version, python.filename, python.sha256, python.size) == (
        "conda", "3.10.16", "python-3.10.16-he725a3c_1_cpython.conda", "d" * 64, 25199631)
    assert python.url == "https://conda.anaconda.org/conda-forge/linux-64/python-3.10.16-he725a3c_1_cpython.conda"
    assert artifacts[0].filename == "_libgcc_mutex-0.1-conda_forge.tar.bz2" and artifacts[0].sets == []


def test_a_link_record_that_carries_url_and_sha256_is_taken_as_it_is():
    data = copy.deepcopy(DRY_RUN)
    fetched = {r["name"]: r for r in data["actions"].pop("FETCH")}
    data["actions"]["LINK"] = [fetched[name] for name in LINK_ORDER]
    assert [(a.name, a.sha256) for a in conda_artifacts(data)] == [(n, fetched[n]["sha256"]) for n in LINK_ORDER]


def test_a_package_without_sha256_is_refused_by_name():
    data = copy.deepcopy(DRY_RUN)
    del data["actions"]["FETCH"][3]["sha256"]
    with pytest.raises(OperationFailed, match=r"no sha256 for the conda package python-3\.10\.16-he725a3c_1_cpython"):
        conda_artifacts(data)


def test_a_package_linked_but_not_fetched_is_refused_by_name():
    data = copy.deepcopy(DRY_RUN)
    data["actions"]["FETCH"] = [r for r in data["actions"]["FETCH"] if r["name"] != "libgcc"]
    with pytest.raises(OperationFailed, match=r"conda would link libgcc-14\.2\.0-h767d61c_2 but listed no download"):
        conda_artifacts(data)


@pytest.mark.parametrize("answer", [{"success": True}, {"actions": {"LINK": [], "FETCH": []}}, []])
def test_an_answer_without_packages_is_refused(answer):
    with pytest.raises(OperationFailed, match="conda's dry run"):
        conda_artifacts(answer)


# -- running conda ----------------------------------------------------------------------------

def test_the_dry_run_is_an_argv_for_the_profiles_channel_platform_and_specs():
    spec = load_profile("cuda121").conda
    argv = dry_run_argv(Path("/s/miniforge/bin/conda"), spec, Path("/s/env"))
    assert argv == ["/s/miniforge/bin/conda", "create", "--dry-run", "--json", "--override-channels", "--channel",
                    "https://conda.anaconda.org/conda-forge", "--platform", "linux-64", "--prefix", "/s/env",
                    "python=3.10.16", "pip"]


def test_the_scratch_conda_reads_none_of_the_operators_conda_setup(monkeypatch, tmp_path):
    for key, value in {"CONDARC": "/home/me/.condarc", "CONDA_CHANNELS": "defaults", "CONDA_PREFIX": "/opt/c",
                       "PYTHONPATH": "/x", "CONDA_SSL_VERIFY": "/etc/ca.pem", "HTTPS_PROXY": "http://proxy:3128"}.items():
        monkeypatch.setenv(key, value)
    env = conda_env(tmp_path / "home", tmp_path / "pkgs")
    assert not {"CONDARC", "CONDA_CHANNELS", "CONDA_PREFIX", "PYTHONPATH"} & set(env)
    assert env["CONDA_SSL_VERIFY"] == "/etc/ca.pem" and env["HTTPS_PROXY"] == "http://proxy:3128"
    assert (env["HOME"], env["CONDA_PKGS_DIRS"]) == (str(tmp_path / "home"), str(tmp_path / "pkgs"))


def test_an_unreachable_channel_says_the_lock_needs_it_and_hosts_never_do():
    answer = json.dumps({"caused_by": "None", "error": "CondaHTTPError: HTTP 000 CONNECTION FAILED for url "
                         "<https://conda.anaconda.org/conda-forge/linux-64/repodata.json>\nElapsed: -\n",
                         "exception_name": "CondaHTTPError", "message": "HTTP 000 CONNECTION FAILED for url "
                         "<https://conda.anaconda.org/conda-forge/linux-64/repodata.json>\nElapsed: -\n"})
    message = str(failure(load_profile("cuda121"), 1, answer, ""))
    assert "\n" not in message
    assert "needs conda-forge reachable from this machine" in message and "hosts never reach it" in message
    assert "HTTP 000 CONNECTION FAILED" in message


def test_specs_conda_cannot_satisfy_are_not_blamed_on_the_network():
    answer = json.dumps({"exception_name": "PackagesNotFoundError",
                         "message": "The following packages are not available from current channels:\n\n"
                                    "  - python=3.10.99\n"})
    message = str(failure(load_profile("cuda121"), 1, answer, ""))
    assert "\n" not in message and "reachable" not in message
    assert message.startswith("conda could not resolve the conda packages of profile cuda121 "
                              "(python=3.10.16 pip from conda-forge): The following packages are not available")


FAKE_INSTALLER = textwrap.dedent("""\
    #!/bin/bash
    # Stand-in Miniforge installer: `bash INSTALLER -b -p ROOT` makes ROOT/bin/conda, which logs its
    # argv and environment and answers what the test put in $FM9G_TEST_CONDA.
    set -eu
    [ "$1" = -b ] && [ "$2" = -p ] || exit 3
    [ ! -e "$3" ] || { echo "ERROR: File or directory already exists: '$3'" >&2; exit 1; }
    mkdir -p "$3/bin"
    cat > "$3/bin/conda" <<'CONDA'
    #!/bin/sh
    printf '%s\\n' "$@" > "$FM9G_TEST_CONDA/argv"
    env > "$FM9G_TEST_CONDA/env"
    ls -A "$CONDA_PKGS_DIRS" > "$FM9G_TEST_CONDA/pkgs" 2>/dev/null || echo absent > "$FM9G_TEST_CONDA/pkgs"
    cat "$FM9G_TEST_CONDA/answer.json"
    exit "$(cat "$FM9G_TEST_CONDA/status")"
    CONDA
    chmod +x "$3/bin/conda"
    """)


def fake_conda(folder: Path, answer: dict, status: int = 0) -> tuple[Path, dict]:
    """(a folder holding a stand-in Miniforge installer, the installer's profile entry); its conda
    answers ``answer`` with exit ``status`` and logs into ``folder``/conda (FM9G_TEST_CONDA)."""
    log = folder / "conda"
    log.mkdir(parents=True)
    (log / "answer.json").write_text(json.dumps(answer))
    (log / "status").write_text(str(status))
    installers = folder / "installers"
    installers.mkdir()
    installer = installers / "Miniforge3-25.3.0-3-Linux-x86_64.sh"
    installer.write_text(FAKE_INSTALLER)
    return installers, {"name": "miniforge3", "version": "25.3.0-3", "sha256": sha256_of(installer),
                        "url": "http://127.0.0.1:9/Miniforge3-25.3.0-3-Linux-x86_64.sh"}


def cuda121_with(installer: dict) -> Profile:
    return Profile.model_validate(load_profile("cuda121").model_dump() | {"installers": [installer]})


def test_lock_installs_the_locked_miniforge_into_scratch_and_asks_its_conda(tmp_path, monkeypatch):
    installers, entry = fake_conda(tmp_path, DRY_RUN)
    monkeypatch.setenv("FM9G_TEST_CONDA", str(tmp_path / "conda"))
    monkeypatch.setenv("CONDA_CHANNELS", "defaults")
    cache = Cache(tmp_path / "cache")
    steps = []
    artifacts = lock_conda_packages(cuda121_with(entry), cache, search=[installers], on_step=steps.append)
    assert [a.name for a in artifacts] == LINK_ORDER
    assert cache.has(entry["sha256"], "Miniforge3-25.3.0-3-Linux-x86_64.sh")  # brought into the cache, as fetch does
    argv = (tmp_path / "conda" / "argv").read_text().splitlines()
    assert argv[:9] == ["create", "--dry-run", "--json", "--override-channels", "--channel",
                        "https://conda.anaconda.org/conda-forge", "--platform", "linux-64", "--prefix"]
    assert argv[10:] == ["python=3.10.16", "pip"]
    env = dict(line.split("=", 1) for line in (tmp_path / "conda" / "env").read_text().splitlines() if "=" in line)
    assert "CONDA_CHANNELS" not in env and env["HOME"] != str(Path.home())
    assert (tmp_path / "conda" / "pkgs").read_text().strip() in ("", "absent")  # an empty package cache
    assert not Path(env["HOME"]).exists()  # the scratch directory is gone
    assert any("conda-forge" in step for step in steps)


def test_lock_reports_an_unreachable_channel_in_one_line(tmp_path, monkeypatch):
    installers, entry = fake_conda(tmp_path, {"exception_name": "CondaHTTPError",
                                              "message": "HTTP 000 CONNECTION FAILED for url <https://conda."
                                                         "anaconda.org/conda-forge/noarch/repodata.json>\n"}, 1)
    monkeypatch.setenv("FM9G_TEST_CONDA", str(tmp_path / "conda"))
    with pytest.raises(OperationFailed) as raised:
        lock_conda_packages(cuda121_with(entry), Cache(tmp_path / "cache"), search=[installers])
    assert "\n" not in str(raised.value) and "needs conda-forge reachable" in str(raised.value)


def test_lock_without_the_installer_at_hand_names_fetch(tmp_path):
    _, entry = fake_conda(tmp_path, DRY_RUN)
    with pytest.raises(OperationFailed) as raised:
        lock_conda_packages(cuda121_with(entry), Cache(tmp_path / "cache"), search=[])
    message = str(raised.value)
    assert "\n" not in message and message.startswith("Miniforge3-25.3.0-3-Linux-x86_64.sh: ")
    assert "`fm9g-deploy artifacts fetch`" in message


def test_a_profile_without_a_conda_section_runs_no_conda(tmp_path):
    assert lock_conda_packages(load_profile("cuda130"), Cache(tmp_path / "cache"), search=[]) == []


# -- the lock model ---------------------------------------------------------------------------

def _conda(name: str, **change) -> LockedArtifact:
    fields = {"name": name, "version": "1.0", "filename": f"{name}-1.0-h0_0.conda", "sha256": "a" * 64,
              "url": f"https://conda.anaconda.org/conda-forge/linux-64/{name}-1.0-h0_0.conda", "kind": "conda"}
    return LockedArtifact.model_validate(fields | change)


@pytest.mark.parametrize("change, message", [
    ({"url": None}, "a conda package needs a url"),
    ({"sha256": None}, "sha256"),
    ({"filename": "python-1.0-h0_0.whl"}, "a conda package is a .conda or .tar.bz2 file"),
    ({"sets": ["base"]}, "a conda package belongs to no install set"),
])
def test_a_locked_conda_package_needs_url_sha256_a_conda_file_and_no_set(change, message):
    _conda("python")  # the unchanged entry is fine
    with pytest.raises(ValueError, match=message):
        _conda("python", **change)


def test_lock_keeps_conda_packages_in_lock_order_and_apart_from_pips_sets():
    base = load_lock("cuda121")
    packages = [_conda(name, sha256=char * 64) for name, char in zip(["zlib", "python", "pip"], "abc", strict=True)]
    lock = base.model_copy(update={"artifacts": [*base.installers(), *packages, *base.artifacts[1:]]})
    lock = Lock.model_validate(json.loads(lock_text(lock)))  # what is written reads back
    assert [a.name for a in lock.conda_packages()] == ["zlib", "python", "pip"]
    assert not {a.kind for a in lock.python_files("base")} & {"conda"}
    assert base.conda_packages() == []  # the committed lock: conda-forge was not reachable where it was made


# -- what the hosts are told ------------------------------------------------------------------

def with_conda_packages(lock: Lock) -> Lock:
    """``lock`` plus the conda packages of DRY_RUN after its installer, as `artifacts lock` places them."""
    installers = lock.installers()
    rest = [a for a in lock.artifacts if a.kind != "installer"]
    return lock.model_copy(update={"artifacts": [*installers, *conda_artifacts(DRY_RUN), *rest]})


def _stack(tmp_path, lock, serving: str = "{}") -> Stack:
    cache, set_name = check_mode_cache(tmp_path, "cuda121", lock)
    config = parse_config(f"model:\n  name: {MODEL}\nprofile: cuda121\nmirror:\n  url: {MIRROR}\nserving: {serving}\n")
    return Stack(config, load_profile("cuda121"), lock, set_name, cache, MIRROR)


def test_hosts_get_the_conda_packages_as_mirror_urls_in_link_order(tmp_path):
    from tests.unit.test_gpu_profile_render import lock_with_operator_wheel

    values = provision_vars(_stack(tmp_path, lock_with_operator_wheel()))  # holds DRY_RUN's packages
    packages = values["fm9g_python_env_conda_packages"]
    assert [p["filename"] for p in packages] == [
        "_libgcc_mutex-0.1-conda_forge.tar.bz2", "libgcc-14.2.0-h767d61c_2.conda", "python-3.10.16-he725a3c_1_cpython.conda",
        "pip-25.1.1-pyh8b19718_0.conda"]
    assert packages[2] == {"filename": "python-3.10.16-he725a3c_1_cpython.conda", "sha256": "d" * 64,
                           "url": f"{MIRROR}/sha256/{'d' * 64}/python-3.10.16-he725a3c_1_cpython.conda"}
    assert not any("conda.anaconda.org" in json.dumps(value) for value in values.values())


def test_a_lock_without_conda_packages_is_refused_in_one_line(tmp_path):
    from tests.unit.test_gpu_profile_render import lock_with_operator_wheel

    lock = lock_with_operator_wheel()
    lock = lock.model_copy(update={"artifacts": [a for a in lock.artifacts if a.kind != "conda"]})
    with pytest.raises(UserError) as raised:
        provision_vars(_stack(tmp_path, lock))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("the cuda121 lock has no conda packages, so hosts would need conda-forge to create "
                              "the env; run `fm9g-deploy artifacts lock --profile cuda121` on a machine that "
                              "reaches conda-forge")


def test_container_hosts_build_no_env_and_need_no_conda_packages(tmp_path):
    from tests.unit.test_gpu_profile_render import lock_with_operator_wheel

    lock = lock_with_operator_wheel()
    lock = lock.model_copy(update={"artifacts": [a for a in lock.artifacts if a.kind != "conda"]})
    values = provision_vars(_stack(tmp_path, lock, "{serve_mode: container}"))
    assert values["fm9g_provision_env"] is False and values["fm9g_python_env_conda_packages"] == []
