"""One sandbox for the whole integration session (Molecule's order: create, converge, verify, destroy).

The sandbox is named fm9g-test (or $FM9G_TEST_SANDBOX) so it never touches an operator's own
`fm9g-sandbox`. Set FM9G_KEEP_SANDBOX=1 to keep it after the run (faster inner loop: the next
run reuses it).
"""

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

TEST_SANDBOX = os.environ.get("FM9G_TEST_SANDBOX", "fm9g-test")


#: Modules that redeploy the shared sandbox into another shape (another topology, another key):
#: they run after every other test, in this order.
RESHAPING_MODULES = ("test_fleet_gateway.py", "test_monitoring.py", "test_multi_host.py", "test_secrets.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # Stable: the other modules keep their order, before the reshaping ones.
    items.sort(key=lambda item: RESHAPING_MODULES.index(item.fspath.basename) + 1
               if item.fspath.basename in RESHAPING_MODULES else 0)


@pytest.fixture(scope="session")
def sandbox_name() -> str:
    return TEST_SANDBOX


@pytest.fixture(scope="session")
def sandbox_inventory(sandbox_name) -> Path:
    result = run_cli("sandbox", "up", "--name", sandbox_name, "--hosts", "2", "--gateway", timeout=1200)
    assert result.returncode == 0, result.stderr
    inventory = Path(result.stdout.strip().splitlines()[-1])
    assert inventory.is_file()
    yield inventory
    if os.environ.get("FM9G_KEEP_SANDBOX") != "1":
        down = run_cli("sandbox", "down", "--name", sandbox_name, timeout=300)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="session")
def sandbox_hosts(sandbox_inventory):
    """testinfra hosts for every sandbox host, over SSH through the Ansible inventory."""
    import testinfra

    return {name: testinfra.get_host(f"ansible://{name}", ansible_inventory=str(sandbox_inventory))
            for name in ("host1", "host2")}


# -- converge: artifacts, provision, deploy (shared by every integration test) -----------------

#: The test deployment: the sandbox defaults, with two replicas per host so one can restart
#: while the other serves (rolling updates, killed replicas).
TEST_CONFIG = """\
model:
  name: tiny-random
profile: cpu
serving:
  served_model_name: 9g
  port: 8020
  api_key: fm9g
  replicas_per_host: 2
  cpu_kvcache_space_gib: 1
mirror:
  url: {mirror_url}
"""


def parse_changed(output: str) -> dict[str, int]:
    """host -> changed count from the CLI's summary lines ("host1: ok, changed=3")."""
    import re

    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+): ok, changed=(\d+)$", output, re.M)}


@pytest.fixture(scope="session")
def test_config(sandbox_inventory) -> Path:
    import yaml

    mirror_url = yaml.safe_load(sandbox_inventory.read_text())["all"]["vars"]["fm9g_mirror_url"]
    path = sandbox_inventory.parent / "fm9g.yml"
    path.write_text(TEST_CONFIG.format(mirror_url=mirror_url))
    return path


@pytest.fixture(scope="session")
def fetched_artifacts(test_config):
    result = run_cli("artifacts", "fetch", "--profile", "cpu", "--model", "tiny-random", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="session")
def first_check(sandbox_inventory, fetched_artifacts):
    """`provision --check` before the first provision: on bare hosts it must list, not fail."""
    return run_cli("provision", "-i", str(sandbox_inventory), "--check", timeout=900)


@pytest.fixture(scope="session")
def provisioned(sandbox_inventory, fetched_artifacts, first_check):
    """Converge: the first provision of both hosts."""
    result = run_cli("provision", "-i", str(sandbox_inventory), timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def deployed_sandbox(sandbox_inventory, provisioned):
    """(inventory, {host: gateway URL}) once every planned replica serves behind its gateway."""
    import yaml

    result = run_cli("deploy", "-i", str(sandbox_inventory), timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    hosts = yaml.safe_load(sandbox_inventory.read_text())["all"]["children"]["serving"]["hosts"]
    return sandbox_inventory, {name: values["fm9g_sandbox_gateway_url"] for name, values in hosts.items()}
