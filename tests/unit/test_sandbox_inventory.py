"""The inventory `sandbox up` writes: serving hosts, their fleet address, the optional gateway host."""

import yaml

from fm9g_deploy.sandbox.hosts import GATEWAY_ROLE, SandboxHost
from fm9g_deploy.sandbox.inventory import inventory_data, write_sandbox_files

MIRROR = "http://sb-mirror:8080"


def serving_hosts():
    return [SandboxHost("sb-host1", 1, "running", 2201, 8021, "10.0.0.2"),
            SandboxHost("sb-host2", 2, "running", 2202, 8022, "10.0.0.3")]


def gateway_host():
    return SandboxHost("sb-gw1", 1, "running", 2301, 8031, "10.0.0.4", role=GATEWAY_ROLE)


def test_without_a_gateway_there_is_only_the_serving_group(tmp_path):
    data = inventory_data(serving_hosts(), tmp_path / "key", MIRROR)["all"]
    assert list(data["children"]) == ["serving"]
    serving = data["children"]["serving"]["hosts"]
    assert serving["host1"] == {
        "ansible_host": "127.0.0.1",
        "ansible_port": 2201,
        "fm9g_sandbox_container": "sb-host1",
        "fm9g_sandbox_gateway_url": "http://127.0.0.1:8021",
        "fm9g_serving_address": "sb-host1",
    }
    assert serving["host2"]["fm9g_serving_address"] == "sb-host2"
    assert data["vars"]["fm9g_mirror_url"] == MIRROR


def test_every_serving_host_is_reached_on_the_network_by_its_container_name(tmp_path):
    data = inventory_data(serving_hosts(), tmp_path / "key", MIRROR, gateway=gateway_host())["all"]
    serving = data["children"]["serving"]["hosts"]
    assert {name: values["fm9g_serving_address"] for name, values in serving.items()} == {
        "host1": "sb-host1", "host2": "sb-host2"}
    # Ansible and the control node still use the loopback ports.
    assert all(values["ansible_host"] == "127.0.0.1" for values in serving.values())


def test_the_gateway_host_is_in_its_own_group(tmp_path):
    children = inventory_data(serving_hosts(), tmp_path / "key", MIRROR, gateway=gateway_host())["all"]["children"]
    assert list(children) == ["serving", "gateway"]
    assert children["gateway"]["hosts"] == {"gw1": {
        "ansible_host": "127.0.0.1",
        "ansible_port": 2301,
        "fm9g_sandbox_container": "sb-gw1",
        "fm9g_sandbox_gateway_url": "http://127.0.0.1:8031",
        "fm9g_serving_address": "sb-gw1",
    }}
    assert "gw1" not in children["serving"]["hosts"]


def test_host_names_in_the_inventory():
    assert [h.inventory_name for h in serving_hosts()] == ["host1", "host2"]
    assert gateway_host().inventory_name == "gw1"


def test_written_inventory_loads_and_a_rewrite_changes_nothing(tmp_path):
    assert write_sandbox_files(tmp_path, serving_hosts(), tmp_path / "key", MIRROR, gateway=gateway_host())
    loaded = yaml.safe_load((tmp_path / "hosts.yml").read_text())
    assert loaded == inventory_data(serving_hosts(), tmp_path / "key", MIRROR, gateway=gateway_host())
    assert not write_sandbox_files(tmp_path, serving_hosts(), tmp_path / "key", MIRROR, gateway=gateway_host())
    # Dropping the gateway host drops its group.
    assert write_sandbox_files(tmp_path, serving_hosts(), tmp_path / "key", MIRROR)
    assert "gateway" not in yaml.safe_load((tmp_path / "hosts.yml").read_text())["all"]["children"]


def test_ansible_sees_the_groups_and_the_serving_address(tmp_path):
    write_sandbox_files(tmp_path, serving_hosts(), tmp_path / "key", MIRROR, gateway=gateway_host())
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(sys.executable).parent / "ansible-inventory"
    result = subprocess.run([str(tool), "-i", str(tmp_path / "hosts.yml"), "--list"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = yaml.safe_load(result.stdout)
    assert listed["gateway"]["hosts"] == ["gw1"]
    assert sorted(listed["serving"]["hosts"]) == ["host1", "host2"]
    assert listed["_meta"]["hostvars"]["host2"]["fm9g_serving_address"] == "sb-host2"


def test_the_sandbox_config_holding_the_key_is_its_owners_alone(tmp_path):
    write_sandbox_files(tmp_path, serving_hosts(), tmp_path / "key", MIRROR)
    config = tmp_path / "fm9g.yml"
    assert "api_key:" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600
    config.chmod(0o644)  # as an earlier version wrote it
    assert write_sandbox_files(tmp_path, serving_hosts(), tmp_path / "key", MIRROR)
    assert config.stat().st_mode & 0o777 == 0o600
