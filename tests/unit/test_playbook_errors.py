"""A playbook Ansible cannot even parse fails with Ansible's own words, not "no output"."""

from __future__ import annotations

import pytest

from fm9g_deploy import ansible
from fm9g_deploy.errors import OperationFailed


def test_a_yaml_error_in_a_playbook_is_told_with_its_place(tmp_path, monkeypatch):
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  tasks:\n    - debug: msg: a: b\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    monkeypatch.setattr(ansible, "playbook_path", lambda name: broken)
    result = ansible.run_playbook("broken.yml", inventory, quiet=True)
    assert result.rc != 0
    (problem,) = result.problems
    assert "YAML parsing failed" in problem and f"Origin: {broken}:3:" in problem
    with pytest.raises(OperationFailed, match="YAML parsing failed"):
        ansible.print_summary(result, "deploy")


def test_no_output_at_all_is_still_said(tmp_path):
    assert ansible._tail("") == "no output"
    assert ansible._tail("a\nb\nc\nd\n") == "b c d"
