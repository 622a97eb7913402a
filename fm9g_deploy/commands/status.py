"""`fm9g-deploy status` and `fm9g-deploy stop`: see and stop the served replicas."""

from __future__ import annotations

import argparse

from fm9g_deploy.commands.common import add_inventory_args


#: --watch's refresh when it is given no number of seconds.
WATCH_SECONDS = 5.0

STATUS_DESCRIPTION = """\
Ask every serving host for its replicas, live: the systemd unit's (or container's) state, whether
the replica answers /v1/models with the served name (a real request), uptime, restarts (the unit's
and the engine's) and the last crash's cause; from vLLM's own metrics, the requests running and
waiting, the KV-cache usage and the tokens generated per second (two reads a second apart); and
the model release and each replica's config hash against what `deploy` would put there now (drift:
"ok", or "DRIFT" with what differs listed under the table). Where the desired state cannot be
planned on this control node (no artifact cache, say), drift shows as unknown ("?").

Changes nothing. Exits 0 when every replica is ready, 1 otherwise. --watch redraws the table every
SECONDS (default 5) until Ctrl-C (exit 0) or --count refreshes.
"""


def register(subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="the live fleet: replica state, ready, load, tokens/s, release and config drift",
        description=STATUS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inventory_args(status)
    status.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible host pattern)")
    status.add_argument("--json", action="store_true", help="print the report as JSON (host -> report)")
    status.add_argument("--watch", type=float, nargs="?", const=WATCH_SECONDS, metavar="SECONDS",
                        help=f"a live table, read again every SECONDS (default {WATCH_SECONDS:g}, at least 1) "
                             "until Ctrl-C")
    status.add_argument("--count", type=int, metavar="N",
                        help="with --watch: end after N refreshes, exiting as a single status would")
    status.set_defaults(handler=run_status)

    stop = subparsers.add_parser(
        "stop", help="stop replicas without failing a request (drained first)",
        description="Stop the replicas on the serving hosts without failing a client request: each is "
                    "taken out of its gateway first, its running requests finish (serving.drain_timeout_s "
                    "at most), then vLLM gets SIGTERM and finishes what still runs. Units are stopped and "
                    "disabled, containers (serve_mode container) stopped and kept for their logs. They stay "
                    "out of the gateway until `deploy` starts them again.")
    add_inventory_args(stop)
    stop.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible host pattern)")
    stop.add_argument("--replica", type=int, action="append", default=[], metavar="INDEX",
                      help="only this replica index on each host (repeatable; default: all)")
    stop.add_argument("--check", action="store_true", help="report what would stop; stop nothing")
    stop.set_defaults(handler=run_stop)


def collect_status(inventory, config, limit=None) -> dict:
    """host -> {replicas: [...], model_dir, env_lock}, read through playbooks/status.yml."""
    import json
    import tempfile
    from pathlib import Path

    from fm9g_deploy import layout
    from fm9g_deploy.ansible import run_playbook
    from fm9g_deploy.errors import OperationFailed
    from fm9g_deploy.profiles import load_profile

    profile = load_profile(config.profile)
    with tempfile.TemporaryDirectory(prefix="fm9g-status-") as folder:
        result = run_playbook("status.yml", inventory, limit=limit, quiet=True, extra_vars={
            "fm9g_status_dir": folder,
            "fm9g_status_model_current": layout.model_current(config),
            "fm9g_status_env_prefix": layout.env_prefix(profile.env.name),
        })
        reports = {path.stem: json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))}
    if not result.ok and not reports:
        raise OperationFailed("reading status failed: " + ("; ".join(result.problems) or f"rc {result.rc}"))
    for problem in result.problems:
        host = problem.split(":", 1)[0]
        reports.setdefault(host, {"replicas": [], "problem": problem})
    return reports


def check_status_args(args: argparse.Namespace) -> None:
    """UserError for --watch/--count values that cannot work, before any host is asked."""
    import math

    from fm9g_deploy.errors import UserError

    if args.watch is not None and args.json:
        raise UserError("--watch draws a live table, --json prints one report: drop one of them "
                        "(for a feed of JSON, run `status --json` in a loop)")
    if args.watch is not None and not (args.watch >= 1 and math.isfinite(args.watch)):
        raise UserError(f"--watch {args.watch:g}: give 1 or more seconds between refreshes")
    if args.count is not None and args.watch is None:
        raise UserError("--count counts --watch's refreshes: add --watch")
    if args.count is not None and args.count < 1:
        raise UserError(f"--count {args.count}: give 1 or more refreshes")


def run_status(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from fm9g_deploy.ansible import serving_hosts
    from fm9g_deploy.commands.common import config_for, inventory_path
    from fm9g_deploy.fleet_status import all_ready, desired_state, table_notes, with_drift

    check_status_args(args)
    config = config_for(args)
    inventory = inventory_path(args)
    serving_hosts(inventory, args.limit)  # else the playbook matches no host and reports nothing
    desired = desired_state(config, inventory, args.limit)
    if args.watch is not None:
        return _watch(args, config, inventory, desired)
    reports = with_drift(collect_status(inventory, config, args.limit), desired)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0 if all_ready(reports) else 1
    Console(width=180).print(status_table(f"{config.model.name} on profile {config.profile}", reports))
    for note in table_notes(reports):
        print(note)
    return 0 if all_ready(reports) else 1


def status_table(title: str, reports: dict, caption: str | None = None):
    from rich.table import Table

    from fm9g_deploy.fleet_status import COLUMNS, table_rows

    table = Table(title=title, caption=caption)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in table_rows(reports):
        table.add_row(*row)
    return table


def _watch(args: argparse.Namespace, config, inventory, desired) -> int:
    """The table redrawn in place every --watch seconds; Ctrl-C ends it (exit 0)."""
    import time

    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from fm9g_deploy.errors import OperationFailed
    from fm9g_deploy.fleet_status import all_ready, table_notes, with_drift

    title = f"{config.model.name} on profile {config.profile}"
    reports: dict = {}
    refreshes = 0
    console = Console() if Console().is_terminal else Console(width=180)
    try:
        # Not a terminal (a pipe, a log): each read is printed after the last, nothing redrawn.
        with Live(console=console, auto_refresh=False) if console.is_terminal else _Printer(console) as live:
            while True:
                try:
                    reports = with_drift(collect_status(inventory, config, args.limit), desired)
                    caption = f"read at {time.strftime('%H:%M:%S')}, every {args.watch:g}s; Ctrl-C ends"
                except OperationFailed as exc:
                    # A host gone for a moment is what a watch is for: say so and keep watching.
                    caption = f"reading failed at {time.strftime('%H:%M:%S')}: {exc}; showing the last read"
                notes = Text("\n".join(table_notes(reports)))
                live.update(Group(status_table(title, reports, caption), notes), refresh=True)
                refreshes += 1
                if args.count is not None and refreshes >= args.count:
                    break
                time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    return 0 if all_ready(reports) else 1


class _Printer:
    """Live's update() for output that is not a terminal: print each frame in turn."""

    def __init__(self, console) -> None:
        self.console = console

    def __enter__(self) -> "_Printer":
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def update(self, renderable, refresh: bool = False) -> None:
        self.console.print(renderable)


def run_stop(args: argparse.Namespace) -> int:
    from fm9g_deploy.ansible import print_summary, run_playbook, serving_hosts
    from fm9g_deploy.commands.common import config_for, inventory_path

    from fm9g_deploy.errors import UserError

    if any(index < 0 for index in args.replica):
        raise UserError(f"--replica {min(args.replica)}: replica indexes start at 0; see `fm9g-deploy status`")
    config = config_for(args)
    inventory = inventory_path(args)
    serving_hosts(inventory, args.limit)  # else the playbook matches no host and "succeeds"
    result = run_playbook("stop.yml", inventory, limit=args.limit, check=args.check,
                          extra_vars={"fm9g_replica_mode": config.serving.serve_mode,
                                      "fm9g_rollout_drain_timeout_s": config.serving.drain_timeout_s,
                                      "fm9g_rollout_stop_indexes": sorted(set(args.replica))})
    print_summary(result, "stop (check mode)" if args.check else "stop")
    return 0
