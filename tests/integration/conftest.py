"""One sandbox for the whole integration session (Molecule's order: create, converge, verify, destroy).

The sandbox is named fm9g-test so it never touches an operator's own `fm9g-sandbox`. Set
FM9G_KEEP_SANDBOX=1 to keep it after the run (faster inner loop: the next run reuses it).
"""

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

TEST_SANDBOX = "fm9g-test"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sandbox_name() -> str:
    return TEST_SANDBOX


@pytest.fixture(scope="session")
def sandbox_inventory(sandbox_name) -> Path:
    result = run_cli("sandbox", "up", "--name", sandbox_name, "--hosts", "2", timeout=1200)
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
