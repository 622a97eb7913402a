"""`fm9g-deploy init DIR`: the example config and inventory copied, nothing ever overwritten."""

import os
import shlex
import stat
from pathlib import Path

import pytest

from fm9g_deploy.cli import build_parser, main
from fm9g_deploy.config import load_config
from fm9g_deploy.paths import CONFIG_FILENAME, EXAMPLE_INVENTORY_DIR

WHEEL = "vllm-0.5.0.dev0+cu122-cp310-cp310-linux_x86_64.whl"


def _init(capsys, directory) -> tuple[int, str, str]:
    code = main(["init", str(directory)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _targets(directory: Path) -> list[Path]:
    return [directory / CONFIG_FILENAME, directory / "hosts.yml", directory / "artifacts" / "README.txt"]


def _snapshot(root: Path) -> dict:
    """Every path under root with its kind, mode and (for files) bytes."""
    tree = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        tree[path.relative_to(root)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                        path.read_bytes() if path.is_file() else None)
    return tree


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("fm9g-deploy ")]


def _parse(command: str):
    argv = shlex.split(command)
    assert argv[0] == "fm9g-deploy"
    return build_parser().parse_args(argv[1:])


def test_writes_the_examples_byte_for_byte(tmp_path, capsys):
    directory = tmp_path / "site"
    code, out, err = _init(capsys, directory)
    assert (code, err) == (0, "")
    config, hosts, readme = _targets(directory)
    assert config.read_bytes() == (EXAMPLE_INVENTORY_DIR / CONFIG_FILENAME).read_bytes()
    assert hosts.read_bytes() == (EXAMPLE_INVENTORY_DIR / "hosts.yml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o644
    assert stat.S_IMODE(readme.stat().st_mode) == 0o644
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == sorted(
        [Path(CONFIG_FILENAME), Path("hosts.yml"), Path("artifacts"), Path("artifacts/README.txt")])
    # The list of files written comes before the next steps, one line each.
    written, _, steps = out.partition("Next steps:")
    assert [line.strip() for line in written.splitlines()[1:] if line.strip()] == [str(p) for p in _targets(directory)]
    assert steps


def test_modes_do_not_depend_on_the_umask(tmp_path, capsys):
    old = os.umask(0o077)
    try:
        code, _, _ = _init(capsys, tmp_path / "site")
    finally:
        os.umask(old)
    assert code == 0
    assert stat.S_IMODE((tmp_path / "site" / "hosts.yml").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "site" / CONFIG_FILENAME).stat().st_mode) == 0o600


def test_written_config_passes_validation(tmp_path, capsys):
    directory = tmp_path / "site"
    assert _init(capsys, directory)[0] == 0
    config = load_config(directory / CONFIG_FILENAME)
    assert config.model.name == "fm9g-4b" and config.profile == "cuda121"
    # And the CLI's own check, as the next steps run it.
    assert main(["config", "check", "--config", str(directory / CONFIG_FILENAME)]) == 0


def test_readme_names_the_operator_files_and_real_commands(tmp_path, capsys):
    directory = tmp_path / "site"
    assert _init(capsys, directory)[0] == 0
    text = (directory / "artifacts" / "README.txt").read_text("utf-8")
    assert WHEEL in text and "9G4B.tar" in text and "sha256" in text and "cloud-drive" in text
    commands = _commands(text)
    adds = [_parse(command) for command in commands if command.startswith("fm9g-deploy artifacts add ")]
    assert [(a.file.name, a.family, a.model) for a in adds] == [
        (WHEEL, "fm9g-4b-7b-70b", None), ("9G4B.tar", None, "fm9g-4b")]
    for args in adds:
        assert args.file.parent == (directory / "artifacts").absolute()
        assert args.config == (directory / CONFIG_FILENAME).absolute()
    assert len(commands) == 5  # the two adds, lock, fetch, serve
    for command in commands:
        _parse(command)


def test_creates_missing_parents_and_accepts_an_empty_dir(tmp_path, capsys):
    nested = tmp_path / "a" / "b" / "site"
    assert _init(capsys, nested)[0] == 0
    assert all(path.is_file() for path in _targets(nested))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _init(capsys, empty)[0] == 0
    assert all(path.is_file() for path in _targets(empty))


def test_existing_artifacts_dir_with_the_users_files_is_kept(tmp_path, capsys):
    directory = tmp_path / "site"
    (directory / "artifacts").mkdir(parents=True)
    wheel = directory / "artifacts" / WHEEL
    wheel.write_bytes(b"the operator's wheel")
    assert _init(capsys, directory)[0] == 0
    assert wheel.read_bytes() == b"the operator's wheel"
    assert (directory / "artifacts" / "README.txt").is_file()


@pytest.mark.parametrize("existing", [0, 1, 2], ids=["fm9g.yml", "hosts.yml", "README.txt"])
def test_one_existing_target_refuses_and_writes_nothing(tmp_path, capsys, existing):
    directory = tmp_path / "site"
    target = _targets(directory)[existing]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"mine, do not touch\n")
    target.chmod(0o640)
    before = _snapshot(tmp_path)
    code, out, err = _init(capsys, directory)
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()]
    assert err.startswith("fm9g-deploy: error: ") and str(target) in err
    assert "choose another DIR" in err and "move" in err
    # The other targets are named only if they exist: here they do not.
    for other in _targets(directory):
        if other != target:
            assert str(other) not in err
    assert _snapshot(tmp_path) == before


def test_every_existing_target_is_named(tmp_path, capsys):
    directory = tmp_path / "site"
    assert _init(capsys, directory)[0] == 0
    before = _snapshot(tmp_path)
    code, _, err = _init(capsys, directory)
    assert code == 2 and len(err.splitlines()) == 1
    assert all(str(path) in err for path in _targets(directory))
    assert _snapshot(tmp_path) == before


def test_a_dangling_symlink_counts_as_existing(tmp_path, capsys):
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / "hosts.yml").symlink_to(tmp_path / "nowhere")
    before = _snapshot(tmp_path)
    code, _, err = _init(capsys, directory)
    assert code == 2 and str(directory / "hosts.yml") in err
    assert not (tmp_path / "nowhere").exists()
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("make_file", ["site", "site/artifacts", "parent"])
def test_a_file_in_the_way_is_refused(tmp_path, capsys, make_file):
    directory = tmp_path / ("parent/site" if make_file == "parent" else "site")
    blocker = tmp_path / make_file
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"a file\n")
    before = _snapshot(tmp_path)
    code, out, err = _init(capsys, directory)
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and f"{blocker} exists and is not a directory" in err
    assert _snapshot(tmp_path) == before


def test_a_failed_write_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """A write that fails half-way (a full disk) removes the files and folders this run made."""
    real_open = os.open

    def failing_open(path, flags, *rest, **kwargs):
        if str(path).endswith("README.txt"):
            raise OSError(28, "No space left on device", str(path))
        return real_open(path, flags, *rest, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)
    directory = tmp_path / "new" / "site"
    code, out, err = _init(capsys, directory)
    assert code == 1 and "No space left on device" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_next_steps_parse_in_order_with_the_dirs_paths(tmp_path, capsys):
    directory = tmp_path / "my site"  # a space: the printed commands must quote it
    code, out, _ = _init(capsys, directory)
    assert code == 0
    steps = out.partition("Next steps:")[2]
    commands = _commands(steps)
    parsed = [_parse(command) for command in commands]
    inventory = directory / "hosts.yml"
    config = directory / CONFIG_FILENAME

    names = []
    for args in parsed:
        sub = _subaction(args)
        name = f"{args.command} {sub}" if sub else args.command
        if args.command == "provision" and args.check:
            name += " --check"
        names.append(name)
    assert names == ["sandbox up", "config check", "ping", "plan", "artifacts add", "artifacts add",
                     "artifacts lock", "artifacts fetch", "artifacts serve", "provision --check", "provision",
                     "deploy", "verify"]
    for args in parsed:
        if args.command in ("ping", "plan", "provision", "deploy", "verify"):
            assert args.inventory == inventory
        if args.command in ("config", "artifacts"):
            assert args.config == config
        if args.command == "artifacts" and _subaction(args) in ("lock", "fetch"):
            assert args.profile == "cuda121"
        if args.command == "artifacts" and _subaction(args) == "add":
            assert args.file.parent == directory / "artifacts"
    assert "'" in commands[1], "a path with a space must be quoted"


def _subaction(args) -> str | None:
    """The second word of a two-level command (`config check`, `artifacts add`, `sandbox up`)."""
    return getattr(args, f"{args.command}_action", None)


def test_help_says_what_is_written_and_that_nothing_is_overwritten(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["init", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fm9g-deploy init" in out
    for name in ("fm9g.yml", "hosts.yml", "artifacts/README.txt", "overwritten"):
        assert name in out


def test_init_is_the_first_command():
    from fm9g_deploy.cli import COMMAND_MODULES

    assert COMMAND_MODULES[0] == "init"
