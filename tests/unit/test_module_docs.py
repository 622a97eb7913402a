"""Every custom Ansible module documents itself in YAML that parses (ansible-doc shows it)."""

import ast

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

MODULES = sorted((PROJECT_ROOT / "library").glob("*.py"))


def _documentation(path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["DOCUMENTATION"]:
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{path.name} has no DOCUMENTATION")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_documentation_parses_and_names_the_module(path):
    doc = _documentation(path)
    assert doc["module"] == path.stem
    assert doc["short_description"] and doc["description"]
    assert all("description" in option for option in (doc.get("options") or {}).values())
