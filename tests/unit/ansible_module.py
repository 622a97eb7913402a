"""Run one of library/'s Ansible modules in-process, as Ansible would on a host: its arguments as
the JSON Ansible hands it, its module_utils as the files Ansible ships with it."""

from __future__ import annotations

import importlib.util
import io
import json
import sys

import pytest

from tests.conftest import PROJECT_ROOT


def run_library_module(name: str, args: dict, monkeypatch, capsys, *, module_utils: dict | None = None,
                       check_mode: bool = False) -> tuple[int, dict]:
    """(exit code, JSON result) of library/NAME.py's main(); ``module_utils`` maps a module_utils
    name to the module object standing in for it."""
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    for util, module in (module_utils or {}).items():
        monkeypatch.setitem(sys.modules, f"ansible.module_utils.{util}", module)
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "library" / f"{name}.py")
    library_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library_module)
    payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode, "_ansible_remote_tmp": "/tmp",
                                       "_ansible_keep_remote_files": False}}
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps(payload)))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exited:
        library_module.main()
    return exited.value.code, json.loads(capsys.readouterr().out)
