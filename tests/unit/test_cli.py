"""The CLI's shape: --help everywhere, a light start-up, one-line errors."""

import os
import subprocess
import sys

import pytest

from fm9g_deploy.cli import COMMAND_MODULES, build_parser
from tests.conftest import run_cli

HEAVY_MODULES = ("ansible", "ansible_runner", "docker", "torch", "vllm", "httpx", "aiohttp", "openai", "rich")


def _subcommand_paths():
    parser = build_parser()
    paths = []
    for action in parser._subparsers._group_actions:  # argparse keeps subparsers here
        for name, sub in action.choices.items():
            paths.append((name,))
            for sub_action in getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []:
                for child in sub_action.choices:
                    paths.append((name, child))
    return paths


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from fm9g_deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_module_is_registered():
    names = {path[0] for path in _subcommand_paths()}
    assert set(COMMAND_MODULES) <= names


@pytest.mark.parametrize("path", _subcommand_paths(), ids=lambda p: " ".join(p))
def test_every_subcommand_has_help(path):
    result = run_cli(*path, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: fm9g-deploy" in result.stdout
    assert len(result.stdout.splitlines()) > 3


def test_unknown_subcommand_exits_2():
    result = run_cli("launch-rockets", timeout=60)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_missing_inventory_is_one_line(tmp_path):
    result = run_cli("ping", "-i", str(tmp_path / "missing.yml"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fm9g-deploy: error: inventory {tmp_path / 'missing.yml'} not found; "
        "pass -i with an inventory file (the sandbox prints its own)"
    ]


def test_bad_sandbox_name_is_refused_before_touching_docker():
    result = run_cli("sandbox", "status", "--name", "Bad_Name!", timeout=60)
    assert result.returncode == 2
    assert "sandbox name 'Bad_Name!' is not valid" in result.stderr


def test_version():
    result = run_cli("--version", timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("fm9g-deploy ")


def test_closed_stdout_is_not_a_traceback():
    """`fm9g-deploy plan ... | head` must end quietly when the reader goes away."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write gets EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fm9g_deploy", "plan", "--model", "fm9g-70b", "--gpus", "8x80GiB", "--json"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
