"""`fm9g-deploy init DIR`: scaffold a new deployment directory from the example config and inventory."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Start a new deployment in DIR (created, with its parents, if missing; an existing empty DIR is
fine). Writes:

  DIR/fm9g.yml              the commented example deployment config (mode 0600: it may later
                            name an API key file)
  DIR/hosts.yml             the example inventory: put your servers in it
  DIR/artifacts/README.txt  where the files only you can download go (the FM9G vLLM wheel, the
                            model tarball) and the commands that register them

Nothing is ever overwritten: if any of these files already exists, init names it and writes
nothing at all. Afterwards it prints the next steps, from `config check` to `verify`.
"""

#: Where the operator's own files go, inside DIR.
ARTIFACTS_DIRNAME = "artifacts"
INVENTORY_FILENAME = "hosts.yml"
README_FILENAME = "README.txt"
CONFIG_MODE = 0o600
FILE_MODE = 0o644


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init", help="scaffold a deployment directory (example fm9g.yml, hosts.yml, artifacts/)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the deployment directory to create or fill (never overwritten)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import shlex

    from fm9g_deploy.config import load_config
    from fm9g_deploy.paths import CONFIG_FILENAME, EXAMPLE_INVENTORY_DIR

    directory: Path = args.dir
    config_source = EXAMPLE_INVENTORY_DIR / CONFIG_FILENAME
    inventory_source = EXAMPLE_INVENTORY_DIR / INVENTORY_FILENAME
    # The example config decides the model and profile the README and the next steps name; it is
    # validated here, before anything is written.
    steps = _Steps(directory, load_config(config_source), shlex.quote)
    writes = [
        (directory / CONFIG_FILENAME, _read_example(config_source), CONFIG_MODE),
        (directory / INVENTORY_FILENAME, _read_example(inventory_source), FILE_MODE),
        (directory / ARTIFACTS_DIRNAME / README_FILENAME, steps.readme().encode("utf-8"), FILE_MODE),
    ]
    _refuse_conflicts(directory, [target for target, _, _ in writes])
    _write_all(directory, writes)

    print("Wrote:")
    for target, _, _ in writes:
        print(f"  {target}")
    print()
    print(steps.next_steps())
    return 0


def _read_example(path: Path) -> bytes:
    from fm9g_deploy.errors import UserError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the example {path}: {exc.strerror or exc}; this fm9g-deploy "
                        "installation is missing its example inventory (reinstall it)") from None


def _refuse_conflicts(directory: Path, targets: list[Path]) -> None:
    """Every reason not to write, found before anything is written."""
    import os

    from fm9g_deploy.errors import UserError

    # DIR and every folder above it that exists must be a directory (DIR may be new, with parents).
    for folder in (directory, *directory.parents):
        if os.path.lexists(folder):
            if not folder.is_dir():
                what = "DIR" if folder == directory else f"a parent of {directory}"
                raise UserError(f"{folder} exists and is not a directory ({what}); choose another DIR "
                                "or move the file away; nothing was written")
            break
    artifacts = directory / ARTIFACTS_DIRNAME
    if os.path.lexists(artifacts) and not artifacts.is_dir():
        raise UserError(f"{artifacts} exists and is not a directory; choose another DIR or move it away; "
                        "nothing was written")
    existing = [str(target) for target in targets if os.path.lexists(target)]
    if existing:
        names = existing[0] if len(existing) == 1 else ", ".join(existing[:-1]) + " and " + existing[-1]
        verb = "exists" if len(existing) == 1 else "exist"
        raise UserError(f"{names} already {verb}; init never overwrites a file: choose another DIR or move "
                        f"{'it' if len(existing) == 1 else 'them'} away; nothing was written")


def _write_all(directory: Path, writes: list[tuple[Path, bytes, int]]) -> None:
    """Write every file or none: on any failure, remove what this run created and re-raise."""
    import os

    from fm9g_deploy.errors import UserError

    created_files: list[Path] = []
    created_dirs: list[Path] = []
    try:
        for folder in sorted({target.parent for target, _, _ in writes}, key=lambda p: len(p.parts)):
            missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
            for new in reversed(missing):
                new.mkdir()
                created_dirs.append(new)
        for target, data, mode in writes:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:  # appeared since the check
                raise UserError(f"{target} already exists; init never overwrites a file: choose another DIR "
                                "or move it away; nothing was written") from None
            created_files.append(target)
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)  # the mode asked for, whatever the umask
                handle.write(data)
    except BaseException:
        for path in reversed(created_files):
            try:
                path.unlink()
            except OSError:
                pass
        for path in reversed(created_dirs):
            try:
                path.rmdir()
            except OSError:
                pass
        raise


class _Steps:
    """The README and the next steps for DIR, with the example config's model and profile."""

    def __init__(self, directory: Path, config, quote) -> None:
        from fm9g_deploy.catalog import get_model, load_catalog
        from fm9g_deploy.paths import CONFIG_FILENAME
        from fm9g_deploy.profiles import load_profile

        self.quote = quote
        self.directory = directory
        self.config_path = directory / CONFIG_FILENAME
        self.inventory = directory / INVENTORY_FILENAME
        self.artifacts = directory / ARTIFACTS_DIRNAME
        self.model = get_model(config.model.name)
        self.profile = load_profile(config.profile)
        self.catalog = load_catalog()
        vllm = self.profile.vllm
        self.wheel = vllm.filename if vllm.source == "operator" else None
        self.family = self.model.vllm_wheel_family if self.model.vllm_wheel_family in vllm.families else None

    def _cmd(self, *words) -> str:
        return " ".join(["fm9g-deploy", *(self.quote(str(word)) for word in words)])

    def artifact_commands(self, folder: Path, config_path: Path) -> list[str]:
        """Register the operator's files (found in ``folder``), then lock, fetch and serve."""
        config = ("--config", config_path)
        commands = []
        if self.wheel and self.family:
            commands.append(self._cmd("artifacts", "add", folder / self.wheel, "--family", self.family, *config))
        if self.model.tarball:
            if self.model.generated:
                commands.append(self._cmd("model", "build-tiny", "--out", folder, "--model", self.model.name))
            commands.append(self._cmd("artifacts", "add", folder / self.model.tarball, "--model", self.model.name,
                                      *config))
        profile = ("--profile", self.profile.name)
        commands.append(self._cmd("artifacts", "lock", *profile, *config))
        commands.append(self._cmd("artifacts", "fetch", *profile, "--model", self.model.name, *config))
        commands.append(self._cmd("artifacts", "serve", "--bind", "0.0.0.0:8080", *config))
        return commands

    def readme(self) -> str:
        folder = self.artifacts.absolute()
        lines = [
            "Put here the files fm9g-deploy cannot download for you, then register them in the artifact",
            "cache (hosts never download from the internet: they install from the mirror that",
            "`fm9g-deploy artifacts serve` runs on the control node).",
            "",
        ]
        if self.wheel:
            families = ", ".join(self.profile.vllm.families)
            lines += [
                f"1. The FM9G vLLM wheel (profile {self.profile.name}):",
                f"     {self.wheel}",
                "   It is only available from the cloud-drive link published with the FM9G models; no",
                f"   package index has it. Every family's wheel ({families}) has this same",
                "   file name: they are told apart by sha256 only. Check yours with `sha256sum FILE`",
                "   against the checksum published with the download, then say which family it is",
                f"   with --family ({self.model.name} needs {self.model.vllm_wheel_family}).",
                "",
            ]
        tarballs = [(spec.name, spec.tarball) for spec in self.catalog.values()
                    if spec.tarball and not spec.generated]
        lines += [
            f"{'2' if self.wheel else '1'}. The model tarball, e.g. {self.model.tarball or '9G4B.tar'}"
            f" ({self.model.name}). Catalog names:",
            *(f"     {tarball:<28} --model {name}" for name, tarball in tarballs),
            "   A tarball has no published checksum: the first one registered or fetched is pinned by",
            "   its sha256, and every later one must match. `artifacts fetch --model` downloads it by",
            "   itself only where the catalog knows a URL; otherwise register the one you have.",
            "",
            f"Then, with the example config's model ({self.model.name}) and profile ({self.profile.name}):",
            "",
            *(f"  {command}" for command in self.artifact_commands(folder, self.config_path.absolute())),
            "",
            "`artifacts serve` runs until interrupted: keep it running, and set mirror.url in",
            f"{self.config_path.absolute()} to the address hosts reach it at. See",
            "`fm9g-deploy artifacts add --help` for --replace and --cache-dir.",
            "",
        ]
        return "\n".join(lines)

    def next_steps(self) -> str:
        inventory = ("-i", self.inventory)
        step = iter(range(1, 100))
        out = [
            "Next steps:",
            "",
            "  Rehearse first, on local containers (no GPU: the cpu profile and a tiny model):",
            f"    {self._cmd('sandbox', 'up')}",
            "",
            f"  {next(step)}. Edit {self.config_path} (model, profile, mirror.url), then check it:",
            f"    {self._cmd('config', 'check', '--config', self.config_path)}",
            f"  {next(step)}. Put your servers in {self.inventory}, then check that each answers over SSH:",
            f"    {self._cmd('ping', *inventory)}",
            f"  {next(step)}. See how each host will serve the model (TP, replicas, GPUs, memory):",
            f"    {self._cmd('plan', *inventory)}",
            f"  {next(step)}. Bring the artifacts ({self.artifacts}/{README_FILENAME} says which files go in "
            f"{self.artifacts}/); keep `serve` running, and set mirror.url to it:",
            *([f"     (no {self.model.tarball} of your own? skip its `add`: `fetch --model` downloads it)"]
              if self.model.tarball and self.model.tarball_urls else []),
            *(f"    {command}" for command in self.artifact_commands(self.artifacts, self.config_path)),
            f"  {next(step)}. See what provisioning would change, then provision:",
            f"    {self._cmd('provision', *inventory, '--check')}",
            f"    {self._cmd('provision', *inventory)}",
            f"  {next(step)}. Serve the model:",
            f"    {self._cmd('deploy', *inventory)}",
            f"  {next(step)}. Check every host and the API:",
            f"    {self._cmd('verify', *inventory)}",
        ]
        return "\n".join(out)
