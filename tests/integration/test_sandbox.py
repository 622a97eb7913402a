"""The sandbox: real hosts (systemd, sshd) that Ansible and testinfra reach over SSH."""

import json
import subprocess

import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import TEST_SANDBOX

HOSTS = ("host1", "host2")


def test_every_host_answers_ansible(sandbox_inventory):
    result = run_cli("ping", "-i", str(sandbox_inventory), timeout=300)
    assert result.returncode == 0, result.stderr
    # the serving hosts and the fleet gateway host
    assert sorted(result.stdout.split("\n")[:-1]) == ["gw1: ok", "host1: ok", "host2: ok"], result.stdout


@pytest.mark.parametrize("name", HOSTS)
def test_host_boots_systemd_with_sshd(sandbox_hosts, name):
    host = sandbox_hosts[name]
    assert host.process.get(pid=1).comm == "systemd"
    assert host.service("ssh").is_running
    assert host.service("ssh").is_enabled
    assert host.socket("tcp://0.0.0.0:22").is_listening
    assert host.system_info.distribution == "debian"
    assert host.system_info.codename == "bookworm"
    assert host.run("hostname").stdout.strip() == name


@pytest.mark.parametrize("name", HOSTS)
def test_host_has_python_and_nginx(sandbox_hosts, name):
    host = sandbox_hosts[name]
    assert host.run("python3 -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 11)"
    assert host.run("python3 -m venv --help").rc == 0
    assert host.package("nginx").is_installed
    assert host.file("/root/.ssh/authorized_keys").mode == 0o600


@pytest.mark.parametrize("name", HOSTS)
def test_host_reaches_the_mirror_over_the_sandbox_network(sandbox_hosts, sandbox_inventory, name):
    mirror = yaml.safe_load(sandbox_inventory.read_text())["all"]["vars"]["fm9g_mirror_url"]
    result = sandbox_hosts[name].run(f"curl -sf {mirror}/healthz")
    assert result.rc == 0 and result.stdout.strip() == "ok"


def test_hosts_have_distinct_ssh_host_keys(sandbox_hosts):
    keys = {name: host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string for name, host in sandbox_hosts.items()}
    assert len(set(keys.values())) == len(keys)


def _container_ids(name):
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=fm9g-deploy.sandbox={name}"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def test_second_up_changes_nothing(sandbox_inventory):
    before = _container_ids(TEST_SANDBOX)
    inventory_before = sandbox_inventory.read_text()
    result = run_cli("sandbox", "up", "--name", TEST_SANDBOX, "--hosts", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "nothing changed" in result.stderr
    assert _container_ids(TEST_SANDBOX) == before
    assert sandbox_inventory.read_text() == inventory_before


def test_status_lists_hosts(sandbox_inventory):
    result = run_cli("sandbox", "status", "--name", TEST_SANDBOX, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "host1" in result.stdout and "host2" in result.stdout and "running" in result.stdout


def test_up_then_down_leaves_nothing_behind():
    name = "fm9g-test-down"
    up = run_cli("sandbox", "up", "--name", name, "--hosts", "1", timeout=600)
    assert up.returncode == 0, up.stderr
    again = run_cli("sandbox", "up", "--name", name, "--hosts", "1", timeout=300)
    assert "nothing changed" in again.stderr
    down = run_cli("sandbox", "down", "--name", name, timeout=300)
    assert down.returncode == 0, down.stderr
    assert _container_ids(name) == []
    label = f"label=fm9g-deploy.sandbox={name}"
    for kind in ("network", "volume"):
        listed = subprocess.run(["docker", kind, "ls", "-q", "--filter", label], capture_output=True, text=True, check=True)
        assert listed.stdout.strip() == "", f"{kind} left behind"
    networks = json.loads(subprocess.run(["docker", "network", "ls", "--format", "{{json .Name}}"],
                                         capture_output=True, text=True, check=True).stdout.replace("\n", ",").rstrip(",").join("[]"))
    assert name not in networks
    assert not up.stdout.strip() or not __import__("pathlib").Path(up.stdout.strip()).exists()
