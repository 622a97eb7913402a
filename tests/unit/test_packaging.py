"""The wheel and the sdist carry the Ansible content the CLI drives (setup.py, MANIFEST.in).

The build itself (sdist -> wheel -> a clean venv, driven from an empty directory) runs in
tests/integration/test_installed_wheel.py; these are the fast checks that the three lists agree.
"""

import ast
import re

from fm9g_deploy import paths
from tests.conftest import PROJECT_ROOT


def _setup_entries() -> tuple:
    tree = ast.parse((PROJECT_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONTENT_ENTRIES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no CONTENT_ENTRIES")


def test_setup_copies_what_the_package_looks_up():
    assert _setup_entries() == paths.CONTENT_ENTRIES


def test_the_sdist_carries_every_content_entry():
    manifest = (PROJECT_ROOT / "MANIFEST.in").read_text()
    grafted = set(re.findall(r"^graft (\S+)$", manifest, re.M))
    included = {name for line in re.findall(r"^include (.+)$", manifest, re.M) for name in line.split()}
    for entry in paths.CONTENT_ENTRIES:
        assert entry in (grafted if (PROJECT_ROOT / entry).is_dir() else included), entry
    assert "setup.py" in included  # the sdist's own build step


def test_every_content_entry_exists_and_the_checkout_is_the_content_root():
    assert paths.CONTENT_ROOT == PROJECT_ROOT
    for entry in paths.CONTENT_ENTRIES:
        assert (paths.CONTENT_ROOT / entry).exists(), entry
    for constant in (paths.ANSIBLE_CFG, paths.PLAYBOOKS_DIR, paths.ROLES_DIR, paths.LIBRARY_DIR,
                     paths.MODULE_UTILS_DIR, paths.LOCKS_DIR, paths.IMAGES_DIR, paths.EXAMPLE_INVENTORY_DIR):
        assert constant.relative_to(paths.CONTENT_ROOT).parts[0] in paths.CONTENT_ENTRIES


def test_ansible_is_pointed_at_the_content_root_not_the_working_directory(tmp_path, monkeypatch):
    from fm9g_deploy.ansible import ansible_env

    monkeypatch.chdir(tmp_path)
    env = ansible_env()
    assert env["ANSIBLE_CONFIG"] == str(paths.ANSIBLE_CFG)
    for key, folder in (("ANSIBLE_ROLES_PATH", paths.ROLES_DIR), ("ANSIBLE_LIBRARY", paths.LIBRARY_DIR),
                        ("ANSIBLE_MODULE_UTILS", paths.MODULE_UTILS_DIR)):
        assert env[key] == str(folder) and folder.is_absolute()
