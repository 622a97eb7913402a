"""`fm9g-deploy doctor`: each check says what is wrong and how to fix it; exit 1 when one fails.

No Docker, network or real hosts: the engine ping, the SSH agent and the ping playbook are
replaced by test doubles where a test reaches them.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from fm9g_deploy import ansible as fm9g_ansible
from fm9g_deploy import doctor
from fm9g_deploy.ansible import PlaybookResult
from fm9g_deploy.cli import main
from tests.conftest import PROJECT_ROOT


def _counts(**given: int) -> dict[str, int]:
    return {"ok": 0, "changed": 0, "failures": 0, "unreachable": 0, "skipped": 0, "rescued": 0, "ignored": 0,
            **given}


@pytest.fixture
def engine_down(monkeypatch):
    # Test double: stands in for the Docker engine ping; this one finds no engine.
    def no_engine(timeout: float = doctor.PROBE_TIMEOUT) -> None:
        raise ConnectionError("Error while fetching server API version: no socket")

    monkeypatch.setattr(doctor, "ping_engine", no_engine)


@pytest.fixture
def engine_up(monkeypatch):
    # Test double: stands in for the Docker engine ping; this one answers.
    monkeypatch.setattr(doctor, "ping_engine", lambda timeout=doctor.PROBE_TIMEOUT: None)


@pytest.fixture
def ssh_ready(monkeypatch):
    # Test doubles: an ssh client on PATH and an agent holding one key, whatever this machine has.
    monkeypatch.setattr(doctor, "check_ssh_client", lambda: doctor.CheckResult("ssh client", True, "/usr/bin/ssh"))
    monkeypatch.setattr(doctor, "agent_keys", lambda: 1)


@pytest.fixture
def no_playbook(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the ping playbook ran in a unit test")

    monkeypatch.setattr(fm9g_ansible, "run_playbook", refuse)


def _inventory(folder: Path, key: Path | None = None, *, local_host: bool = False) -> Path:
    key_line = f", ansible_ssh_private_key_file: {key}" if key else ""
    text = ("all:\n  children:\n    serving:\n      hosts:\n"
            f"        h1: {{ansible_host: 192.0.2.1{key_line}}}\n"
            f"        h2: {{ansible_host: 192.0.2.2{key_line}}}\n")
    if local_host:
        text += "  hosts:\n    control: {ansible_connection: local}\n"
    path = folder / "hosts.yml"
    path.write_text(text)
    return path


def _key(folder: Path, mode: int) -> Path:
    key = folder / "id_test"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(mode)
    return key


# -- the checks one by one ------------------------------------------------------------------------

def test_pins_match_pyproject():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == doctor.REQUIRES_PYTHON
    assert f"ansible-core{doctor.ANSIBLE_CORE_SPEC}" in project["dependencies"]


def test_python_check():
    assert doctor.check_python().ok
    old = doctor.check_python((3, 10, 14))
    assert not old.ok and "3.10.14" in old.detail and ">=3.11" in old.detail and old.fix


def test_ansible_checks_pass_in_this_venv():
    core = doctor.check_ansible_core()
    assert core.ok, core.line()
    assert doctor.ANSIBLE_CORE_SPEC in core.detail
    playbook = doctor.check_ansible_playbook()
    assert playbook.ok and playbook.detail.endswith("ansible-playbook")


def test_ansible_core_out_of_range_fails(monkeypatch):
    real = doctor.importlib.metadata.version
    monkeypatch.setattr(doctor.importlib.metadata, "version",
                        lambda name: "2.20.0" if name == "ansible-core" else real(name))
    result = doctor.check_ansible_core()
    assert not result.ok and "2.20.0 is outside >=2.17,<2.20" in result.detail
    assert "pip install 'ansible-core>=2.17,<2.20'" in result.fix


def test_content_check_passes_in_this_checkout():
    result = doctor.check_content()
    assert result.ok, result.line()
    assert result.line().startswith("ok   ansible content: ")


def test_missing_content_directory_fails_with_fix(monkeypatch, tmp_path):
    missing = tmp_path / "roles"
    monkeypatch.setattr(doctor, "ROLES_DIR", missing)
    result = doctor.check_content()
    assert not result.ok and result.detail == f"missing: {missing}"
    line = result.line()
    assert line.startswith(f"FAIL ansible content: missing: {missing}; fix: reinstall the wheel")


def test_disk_check(tmp_path):
    full = doctor.check_disk(10**9, tmp_path / "cache" / "not-yet")
    assert not full.ok and f"free at {tmp_path}" in full.detail
    assert "FM9G_DEPLOY_CACHE_DIR" in full.fix and full.line().startswith("FAIL disk: ")
    assert doctor.check_disk(0, tmp_path / "cache").ok


def test_disk_check_uses_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FM9G_DEPLOY_CACHE_DIR", str(tmp_path / "deep" / "cache"))
    result = doctor.check_disk(0)
    assert result.ok and f"free at {tmp_path} " in result.detail


def test_world_readable_key_named_by_inventory_fails_with_chmod_fix(tmp_path, ssh_ready):
    key = _key(tmp_path, 0o644)
    results = doctor.check_ssh_keys(_inventory(tmp_path, key))
    assert len(results) == 1  # every host names the key: no agent or default key is needed
    (result,) = results
    assert not result.ok and result.name == f"ssh key {key}"
    assert "mode 0644" in result.detail and "h1, h2" in result.detail
    assert result.fix == f"chmod 600 {key}"
    assert result.line().endswith(f"; fix: chmod 600 {key}")


def test_private_key_named_by_inventory_passes(tmp_path, ssh_ready):
    key = _key(tmp_path, 0o600)
    (result,) = doctor.check_ssh_keys(_inventory(tmp_path, key))
    assert result.ok and "mode 0600" in result.detail


def test_missing_key_named_by_inventory_fails(tmp_path, ssh_ready):
    key = tmp_path / "absent"
    (result,) = doctor.check_ssh_keys(_inventory(tmp_path, key))
    assert not result.ok and "No such file" in result.detail and f"ssh-keygen -t ed25519 -f {key}" in result.fix


def test_hosts_without_a_key_need_an_agent_or_default_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    # Test double: no SSH agent.
    monkeypatch.setattr(doctor, "agent_keys", lambda: 0)
    inventory = _inventory(tmp_path, local_host=True)
    (result,) = doctor.check_ssh_keys(inventory)
    assert not result.ok and "for h1, h2, which name no" in result.detail  # the local host needs no key
    assert "ssh-keygen" in result.fix and "ansible_ssh_private_key_file" in result.fix
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ecdsa").write_text("key")
    (result,) = doctor.check_ssh_keys(inventory)
    assert result.ok and str(tmp_path / ".ssh" / "id_ecdsa") in result.detail
    monkeypatch.setattr(doctor, "agent_keys", lambda: 2)
    assert "holds 2 key(s)" in doctor.check_ssh_keys(None)[0].detail


def test_engine_check(monkeypatch, engine_down):
    required = doctor.check_engine(required=True)
    assert not required.ok and "no socket" in required.detail
    assert "`bash scripts/ensure-engine.sh`" in required.fix  # this is a checkout
    optional = doctor.check_engine(required=False)
    assert optional.ok and optional.skipped and optional.line().startswith("skip docker engine: not answering")
    monkeypatch.setattr(doctor, "running_from_checkout", lambda: False)
    assert doctor.check_engine(required=True).fix.startswith("install docker.io and start dockerd")


def test_engine_check_passes(engine_up):
    assert doctor.check_engine(required=True).line() == "ok   docker engine: answers"


def test_each_failed_host_is_its_own_line(monkeypatch, tmp_path):
    inventory = _inventory(tmp_path)
    calls = []

    # Test double for fm9g_deploy.ansible.run_playbook: the real result class, h2 unreachable, h3 failed.
    def ping(name, inventory_path, **kwargs):
        calls.append((name, inventory_path, kwargs))
        return PlaybookResult(
            rc=4,
            stats={"h1": _counts(ok=3), "h2": _counts(unreachable=1), "h3": _counts(ok=1, failures=1)},
            problems=["h2: Connect and run Python: Failed to connect to the host via ssh: Connection timed out",
                      "h3: Gather the OS and Python facts: /usr/bin/python3: not found"],
        )

    monkeypatch.setattr(fm9g_ansible, "run_playbook", ping)
    results = doctor.check_hosts(inventory)
    assert calls == [("ping.yml", inventory, {"quiet": True})]
    assert [(r.name, r.ok) for r in results] == [("host h2", False), ("host h3", False)]
    assert results[0].detail == "unreachable: Connect and run Python: Failed to connect to the host via ssh: " \
                                "Connection timed out"
    assert results[1].detail.startswith("failed: Gather the OS and Python facts: /usr/bin/python3: not found")


def test_a_run_that_never_reached_a_host_fails(monkeypatch, tmp_path):
    # Test double for run_playbook: Ansible stopped before any task ran.
    monkeypatch.setattr(fm9g_ansible, "run_playbook", lambda *a, **k: PlaybookResult(
        rc=1, problems=["ERROR! the playbook could not be read"]))
    (result,) = doctor.check_hosts(_inventory(tmp_path))
    assert not result.ok and result.name == "hosts" and "could not be read" in result.detail


def test_unparseable_inventory_fails_without_running_the_playbook(tmp_path, no_playbook):
    broken = tmp_path / "hosts.yml"
    broken.write_text("all:\n  hosts:\n    h1: {ansible_host: 10.0.0.1\n")
    result = doctor.check_inventory(broken)
    assert not result.ok and "cannot be parsed" in result.detail


def test_lines_are_bounded():
    line = doctor.CheckResult("x", False, "detail\n" * 500, "the fix").line()
    assert len(line) <= doctor.MAX_LINE and "\n" not in line and line.startswith("FAIL x: detail")
    assert line.endswith("fix: the fix")


# -- the command ----------------------------------------------------------------------------------

def test_cli_fails_with_a_fail_line(capsys, engine_up, ssh_ready, no_playbook):
    code = main(["doctor", "--min-free-gib", str(10**9)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    disk = [line for line in out if line.startswith("FAIL disk: ")]
    assert len(disk) == 1 and "; fix: " in disk[0]
    assert out[-1] == "doctor: 1 of 8 checks failed: disk"
    assert all(len(line) <= doctor.MAX_LINE for line in out)


def test_cli_passes_when_every_check_does(capsys, engine_up, ssh_ready, no_playbook):
    code = main(["doctor", "--min-free-gib", "0"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    assert all(line.startswith("ok   ") for line in out[:-1]) and out[-1] == "doctor: all 8 checks passed"


def test_cli_json(capsys, engine_down, ssh_ready, no_playbook):
    code = main(["doctor", "--json", "--min-free-gib", "0"])
    results = json.loads(capsys.readouterr().out)
    assert code == 1  # no inventory: the sandbox's engine is required
    assert all(set(item) == {"name", "ok", "detail", "fix"} for item in results)
    engine = next(item for item in results if item["name"] == "docker engine")
    assert engine["ok"] is False and "ensure-engine.sh" in engine["fix"]
    assert [item["name"] for item in results if not item["ok"]] == ["docker engine"]


def test_cli_with_inventory(capsys, monkeypatch, tmp_path, engine_down, ssh_ready):
    key = _key(tmp_path, 0o600)
    inventory = _inventory(tmp_path, key)

    # Test double for run_playbook: h2 does not answer.
    monkeypatch.setattr(fm9g_ansible, "run_playbook", lambda *a, **k: PlaybookResult(
        rc=4, stats={"h1": _counts(ok=3), "h2": _counts(unreachable=1)},
        problems=["h2: Connect and run Python: Failed to connect to the host via ssh: No route to host"]))
    code = main(["doctor", "-i", str(inventory), "--min-free-gib", "0"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert any(line.startswith("skip docker engine: ") for line in out)  # an inventory: engine not needed
    assert f"ok   inventory: {inventory}: 2 host(s)" in out
    assert any(line.startswith(f"ok   ssh key {key}: ") for line in out)
    failed = [line for line in out if line.startswith("FAIL ")]
    assert len(failed) == 1 and failed[0].startswith("FAIL host h2: unreachable: Connect and run Python: ")
    assert "No route to host; fix: " in failed[0]
    assert out[-1] == "doctor: 1 of 10 checks failed: host h2"
    # --sandbox makes the engine a failure again
    code = main(["doctor", "-i", str(inventory), "--min-free-gib", "0", "--sandbox", "--json"])
    failed = [item["name"] for item in json.loads(capsys.readouterr().out) if not item["ok"]]
    assert code == 1 and failed == ["docker engine", "host h2"]


@pytest.mark.parametrize("argv, expected", [
    (["--min-free-gib", "lots"], "argument --min-free-gib: 'lots' is not a number of GiB"),
    (["--min-free-gib", "-1"], "argument --min-free-gib: '-1' must be a number >= 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_option_is_one_line_exit_2(capsys, argv, expected):
    code = main(["doctor", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [err.strip()] and expected in err


def test_missing_inventory_is_exit_2(capsys, tmp_path):
    code = main(["doctor", "-i", str(tmp_path / "missing.yml")])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_help_describes_every_check(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ("python", "ansible-core", "ansible-playbook", "ansible content", "ssh client", "ssh key",
                 "docker engine", "disk", "inventory, hosts", "--sandbox", "--min-free-gib", "--json"):
        assert name in out, name


def test_help_stays_light():
    import subprocess

    code = ("import sys\nfrom fm9g_deploy.cli import main\ntry:\n    main(['doctor', '--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('ansible', 'docker', 'packaging', "
            "'fm9g_deploy.doctor') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]"
