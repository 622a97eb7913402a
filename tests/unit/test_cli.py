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


# -- one line, always -----------------------------------------------------------------------------

def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from fm9g_deploy.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, expected", [
    (["plan"], "one of the arguments -i/--inventory --gpus is required; see `fm9g-deploy plan --help`"),
    (["plan", "--gpus"], "argument --gpus: expected one argument; see `fm9g-deploy plan --help`"),
    (["chat"], "the following arguments are required: --url; see `fm9g-deploy chat --help`"),
    (["config"], "the following arguments are required: ACTION"),
    (["config", "check", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["launch-rockets"], "invalid choice: 'launch-rockets'"),
])
def test_option_mistakes_are_one_line_not_usage(capsys, argv, expected):
    """argparse printed its usage block above the error: several lines for one mistake."""
    code, out, err = _main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith("fm9g-deploy: error: ") and expected in err


def test_long_multiline_message_is_one_bounded_line(capsys, monkeypatch):
    from fm9g_deploy.commands import config as config_command
    from fm9g_deploy.errors import MAX_ERROR_LINE, UserError

    def huge(args):
        raise UserError("start " + "lol\n" * 1_000_000 + "\x1b[2J\u2028 the fix")

    monkeypatch.setattr(config_command, "run_check", huge)
    code, _, err = _main(capsys, "config", "check")
    assert code == 2
    line = err.rstrip("\n")
    assert len(err.splitlines()) == 1 and len(line) <= MAX_ERROR_LINE
    assert line.startswith("fm9g-deploy: error: start lol") and line.endswith("\\x1b[2J the fix")


def test_unexpected_exception_is_one_line_and_debuggable(capsys, monkeypatch):
    from fm9g_deploy.commands import config as config_command

    def buggy(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(config_command, "run_check", buggy)
    code, _, err = _main(capsys, "config", "check")
    assert code == 1 and len(err.splitlines()) == 1
    assert "internal error: RuntimeError: boom second line" in err and "FM9G_DEBUG=1" in err
    monkeypatch.setenv("FM9G_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        _main(capsys, "config", "check")


@pytest.mark.parametrize("text, limit, expected", [
    ("a\nb\r\nc\x0bd\x0ce\x1cf\x85g\u2028h\u2029i", 400, "a b c d e f g h i"),
    ("bidi\u202eoverride \udcff esc\x1b[0m", 400, "bidi\\u202eoverride \\udcff esc\\x1b[0m"),
    ("x" * 50 + "the fix", 40, "x" * 22 + " ... " + "x" * 6 + "the fix"),
])
def test_one_line(text, limit, expected):
    from fm9g_deploy.errors import one_line

    assert one_line(text, limit) == expected
