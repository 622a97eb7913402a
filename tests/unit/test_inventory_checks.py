"""Commands that run a playbook on the serving group refuse an inventory that has none, before
anything runs; an inventory Ansible cannot parse is named with the parser's own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from fm9g_deploy import ansible
from fm9g_deploy.cli import main
from fm9g_deploy.errors import MAX_ERROR_LINE, UserError

COMMANDS = [["provision"], ["deploy"], ["status"], ["stop"], ["verify"], ["provision", "--check"]]

INVENTORIES = {
    # Exited 0 with "provision: done": the playbook's `hosts: serving` matched nothing.
    "no-serving.yml": ("all:\n  hosts:\n    h1: {ansible_connection: local}\n",
                       "has no host in group serving; put the hosts to serve in a `serving` group"),
    "empty.yml": ("", "has no host in group serving"),
    # Said only "no host in group serving": the parse error itself stayed hidden.
    "broken.yml": ("all:\n  children:\n    serving:\n      hosts:\n        h1: {ansible_host: 10.0.0.1\n",
                   "cannot be parsed (yaml plugin: YAML parsing failed"),
    "broken.ini": ("[serving\nh1\n", "cannot be parsed (ini plugin: Failed to parse inventory"),
}


@pytest.fixture(autouse=True)
def no_playbook_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a playbook ran although the inventory is unusable")

    monkeypatch.setattr(ansible, "run_playbook", refuse)


def _inventory(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text(INVENTORIES[name][0])
    (folder / "fm9g.yml").write_text("model: {name: tiny-random}\nprofile: cpu\n")
    return path


@pytest.mark.parametrize("name", sorted(INVENTORIES))
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unusable_inventory_is_one_line_before_anything_runs(tmp_path, capsys, command, name):
    inventory = _inventory(tmp_path, name)
    code = main([*command, "-i", str(inventory)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "done" not in captured.out
    line = captured.err.rstrip("\n")
    assert len(captured.err.splitlines()) == 1 and len(line) <= MAX_ERROR_LINE
    assert line.startswith(f"fm9g-deploy: error: inventory {inventory} ") and INVENTORIES[name][1] in line


def test_limit_that_leaves_no_serving_host(tmp_path, capsys):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    serving:\n      hosts:\n        h1: {ansible_connection: local}\n")
    (tmp_path / "fm9g.yml").write_text("model: {name: tiny-random}\nprofile: cpu\n")
    assert main(["stop", "-i", str(inventory), "--limit", "nosuch"]) == 2
    assert "has no host in group serving matching --limit 'nosuch'" in capsys.readouterr().err


def test_serving_hosts_of_a_good_inventory(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    serving:\n      hosts:\n        h1: {}\n        h2: {}\n")
    hosts, _, _ = ansible.serving_hosts(inventory)
    assert sorted(host.name for host in hosts) == ["h1", "h2"]
    with pytest.raises(UserError, match="matching --limit 'h3'"):
        ansible.serving_hosts(inventory, "h3")
