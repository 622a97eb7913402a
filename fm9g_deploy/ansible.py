"""Run the project's playbooks with ansible-runner: an argv, never a shell string.

Progress is rendered from ansible-runner's events (one line per task, one per host result);
the result carries per-host stats so callers can tell `changed=0` from a change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm9g_deploy import layout
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.paths import ANSIBLE_CFG, CONTENT_ROOT, LIBRARY_DIR, MODULE_UTILS_DIR, PLAYBOOKS_DIR, ROLES_DIR


@dataclass
class PlaybookResult:
    rc: int
    #: host -> {"ok": n, "changed": n, "failures": n, "unreachable": n, "skipped": n}
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    #: one line per failed or unreachable task result: "host: task: message"
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(host.get("changed", 0) for host in self.stats.values())

    @property
    def ok(self) -> bool:
        return self.rc == 0


def playbook_path(name: str) -> Path:
    path = PLAYBOOKS_DIR / name
    if not path.is_file():
        raise OperationFailed(f"playbook {path} is missing from the installation")
    return path


def playbook_argv(
    playbook: Path,
    inventory: Path,
    *,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    verbose: int = 0,
    extra_vars_file: Path | None = None,
) -> list[str]:
    """The ansible-playbook argv equivalent to a run (shown with --dry-run and in errors)."""
    argv = ["ansible-playbook", "-i", str(inventory), str(playbook)]
    if extra_vars_file:
        argv += ["-e", f"@{extra_vars_file}"]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if limit:
        argv += ["--limit", limit]
    if tags:
        argv += ["--tags", tags]
    if verbose:
        argv.append("-" + "v" * min(verbose, 4))
    return argv


#: The inventory group whose hosts serve (the playbooks' `hosts: serving`).
SERVING_GROUP = "serving"
#: How Ansible's inventory manager reports a plugin that could not parse a source (2.17 to 2.19).
_PARSE_FAILURE = re.compile(r"Failed to parse (?:inventory|(?P<source>\S+)) with '?(?P<plugin>[\w.]+)'? "
                            r"plugin: (?P<message>.+)")


def read_inventory(inventory: Path):
    """(InventoryManager, DataLoader, Ansible's warnings) for ``inventory``; read quietly."""
    import contextlib
    import io

    os.environ.update({key: value for key, value in ansible_env().items() if key.startswith("ANSIBLE_")})
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    loader = DataLoader()
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            manager = InventoryManager(loader=loader, sources=[str(inventory)])
    except AnsibleError as exc:
        raise UserError(f"inventory {inventory} cannot be read: {_one_line(str(exc))[:200]}; fix it") from None
    return manager, loader, said.getvalue()


def inventory_parse_problem(inventory: Path, warnings: str) -> str | None:
    """The parser's own first line about ``inventory``, when a plugin failed to parse (part of) it.

    Every plugin that tried says why it failed; the one the file's suffix calls for says it best.
    """
    failures: dict[str, str] = {}
    for match in _PARSE_FAILURE.finditer(warnings):
        failures.setdefault(match["plugin"], match["message"].strip())
    if not failures:
        return None
    wanted = "yaml" if inventory.suffix in (".yml", ".yaml", ".json") else "ini"
    plugin = wanted if wanted in failures else next(iter(failures))
    return f"{plugin} plugin: {failures[plugin]}"


def serving_hosts(inventory: Path, limit: str | None = None):
    """(the serving hosts the limit leaves, the manager, the loader); UserError when none is left.

    Commands that run a playbook on the serving group call this first: without it, an inventory
    that does not parse or has no `serving` group runs nothing and reports success.
    """
    import contextlib
    import io

    manager, loader, warnings = read_inventory(inventory)  # sets ANSIBLE_* before ansible loads
    from ansible.errors import AnsibleError

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            if limit:
                manager.subset(limit)
            hosts = manager.get_hosts(SERVING_GROUP)
    except AnsibleError as exc:
        raise UserError(f"--limit {limit!r}: {_one_line(str(exc))[:200]}; use an Ansible host pattern") from None
    if hosts:
        return hosts, manager, loader
    problem = inventory_parse_problem(inventory, warnings)
    if problem:
        raise UserError(f"inventory {inventory} cannot be parsed ({problem[:250]}); fix it "
                        f"(`ansible-inventory -i {inventory} --graph` shows what Ansible reads)")
    where = f" matching --limit {limit!r}" if limit else ""
    raise UserError(f"inventory {inventory} has no host in group {SERVING_GROUP}{where}; put the hosts to serve "
                    f"in a `{SERVING_GROUP}` group{' and check --limit' if limit else ''}")


def ansible_env() -> dict[str, str]:
    """Environment for Ansible: the project's ansible.cfg, roles and modules, whatever the cwd
    (a checkout's or an installed wheel's, found through the package)."""
    return {
        "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_LIBRARY": str(LIBRARY_DIR),
        "ANSIBLE_MODULE_UTILS": str(MODULE_UTILS_DIR),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }


def run_playbook(
    name: str,
    inventory: Path,
    *,
    extra_vars: dict[str, Any] | None = None,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    verbose: int = 0,
    quiet: bool = False,
) -> PlaybookResult:
    """Run playbooks/<name> against ``inventory`` and return per-host stats.

    Extra vars may hold secrets: they go to a 0600 file in a private directory that is removed
    afterwards, never onto a command line.
    """
    from ansible_runner.interface import init_command_config

    if not inventory.exists():
        raise UserError(f"inventory {inventory} not found; pass -i with an inventory file")
    playbook = playbook_path(name)
    reporter = _ProgressReporter(quiet=quiet or verbose > 0)
    private = Path(tempfile.mkdtemp(prefix="fm9g-ansible-"))
    try:
        vars_file = private / "extra-vars.json"
        # Every playbook gets the host layout from its one home (fm9g_deploy/layout.py).
        vars_file.write_text(json.dumps({"fm9g_layout": layout.host_layout(), **(extra_vars or {})}))
        vars_file.chmod(0o600)
        argv = playbook_argv(playbook, inventory.resolve(), check=check, diff=diff, limit=limit,
                             tags=tags, verbose=verbose, extra_vars_file=vars_file)
        runner = init_command_config(
            ansible_executable(argv[0]),
            cmdline_args=argv[1:],
            private_data_dir=str(private),
            envvars=ansible_env(),
            event_handler=reporter.on_event,
            quiet=not verbose,
            input_fd=None,
            output_fd=None,
            error_fd=None,
            runner_mode="subprocess",
            host_cwd=str(CONTENT_ROOT),
        )
        runner.run()
        problems = reporter.problems
        if runner.rc != 0 and not problems:
            # Ansible stopped before any task ran (a syntax or inventory error): show its words.
            problems = [_tail(_runner_output(runner))]
        return PlaybookResult(rc=runner.rc, stats=reporter.stats or {}, problems=problems)
    finally:
        shutil.rmtree(private, ignore_errors=True)


#: Tasks named so list, in check mode, the commands a real run would execute.
WOULD_RUN = "Would run:"


#: Lines of a failed replica's journal shown under its failure.
LOG_TAIL_LINES = 20


class _ProgressReporter:
    """Turns ansible-runner events into short progress lines and collects the final stats."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.stats: dict[str, dict[str, int]] | None = None
        self.problems: list[str] = []

    def on_event(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_play_start" and not self.quiet:
            self.console.print(f"[bold]PLAY[/] {data.get('play', '')}")
        elif kind == "playbook_on_task_start" and not self.quiet:
            self.console.print(f"  [cyan]·[/] {data.get('task', '')}")
        elif kind == "runner_on_ok" and not self.quiet and str(data.get("task", "")).startswith(WOULD_RUN):
            # Check mode's listing of the commands a real run executes (a role's debug task).
            messages = data.get("res", {}).get("msg") or []
            for line in [messages] if isinstance(messages, str) else messages:
                self.console.print(f"      [magenta]would run[/] {data.get('host')}: {line}", soft_wrap=True)
        elif kind == "runner_on_ok" and not self.quiet and data.get("res", {}).get("changed"):
            self.console.print(f"      [yellow]changed[/] {data.get('host')}")
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                return True
            res = data.get("res", {})
            message = res.get("msg") or res.get("reason") or "failed"
            stderr_lines = [line for line in str(res.get("stderr") or "").splitlines() if line.strip()]
            if stderr_lines:  # a command's own last words say more than "non-zero return code"
                message = f"{message}: {stderr_lines[-1].strip()}"
            line = f"{data.get('host')}: {data.get('task', '')}: {_one_line(str(message))}"
            self.problems.append(line)
            label = "unreachable" if kind == "runner_on_unreachable" else "failed"
            self.console.print(f"      [red]{label}[/] {line}")
            # A module that knows what the service said last (a replica's journal) returns it.
            for log_line in (res.get("log_tail") or [])[-LOG_TAIL_LINES:]:
                self.console.print(f"        {log_line}", style="dim", markup=False, soft_wrap=True)
        elif kind == "playbook_on_stats":
            self.stats = _collect_stats(data)
        return True


def _collect_stats(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    keys = {"ok": "ok", "changed": "changed", "failures": "failures", "dark": "unreachable",
            "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}
    hosts: set[str] = set()
    for key in keys:
        hosts.update((data.get(key) or {}).keys())
    return {host: {name: int((data.get(key) or {}).get(host, 0)) for key, name in keys.items()} for host in sorted(hosts)}


def _runner_output(runner) -> str:
    """What ansible-playbook printed, both streams: a YAML error in a playbook goes to stderr."""
    from ansible_runner.exceptions import AnsibleRunnerException

    said = []
    for stream in ("stdout", "stderr"):
        try:
            handle = getattr(runner, stream)
        except AnsibleRunnerException:  # the stream was never written
            continue
        said.append(handle.read() if hasattr(handle, "read") else "")
    return "\n".join(said)


def _tail(text: str) -> str:
    """The error lines of Ansible's output, joined into one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or line.startswith("Origin:")] or lines[-3:]
    return " ".join(errors)[:400] or "no output"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else text)[:500]


def print_summary(result: PlaybookResult, action: str) -> None:
    """One line per host (ok / changed / failed / unreachable), then raise if the run failed."""
    for host, counts in result.stats.items():
        state = ("unreachable" if counts["unreachable"] else "failed" if counts["failures"] else
                 f"ok, changed={counts['changed']}")
        print(f"{host}: {state}")
    if not result.ok:
        detail = "; ".join(result.problems[:3]) or f"ansible-playbook exited with {result.rc}"
        raise OperationFailed(f"{action} failed: {detail}")
    print(f"{action}: done, changed={result.changed}")


def ansible_executable(name: str = "ansible-playbook") -> str:
    """The Ansible program beside this Python (a venv's bin) or on PATH."""
    import sys

    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise UserError(f"{name} not found; install fm9g-deploy's dependencies (pip install fm9g-deploy)")
    return found
