"""`fm9g-deploy status` and `fm9g-deploy stop`: see and stop the served replicas."""

from __future__ import annotations

import argparse

from fm9g_deploy.commands.common import add_inventory_args


def register(subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="show each host's replicas: unit state, ready, model, TP, port, uptime",
        description="Ask every serving host for its replicas: the systemd unit's (or container's) state, whether the "
                    "replica answers /v1/models with the served name (a real request), the model "
                    "release, the profile, TP, port and uptime. Changes nothing.")
    add_inventory_args(status)
    status.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible host pattern)")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
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


def run_status(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from fm9g_deploy.ansible import serving_hosts
    from fm9g_deploy.commands.common import config_for, inventory_path

    config = config_for(args)
    inventory = inventory_path(args)
    serving_hosts(inventory, args.limit)  # else the playbook matches no host and reports nothing
    reports = collect_status(inventory, config, args.limit)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0 if _all_ready(reports) else 1
    table = Table(title=f"{config.model.name} on profile {config.profile}")
    for column in ("host", "replica", "unit", "ready", "TP", "GPUs", "port", "uptime", "restarts", "last cause",
                   "model release"):
        table.add_column(column, overflow="fold")
    notes: list[str] = []
    for host, report in reports.items():
        release = report.get("model_dir", "").rstrip("/").split("/releases/")[-1][:12] or "-"
        if not report.get("replicas"):
            table.add_row(host, "-", report.get("problem", "no replicas")[:60], "no", "", "", "", "", "", "", release)
        for replica in report.get("replicas", []):
            uptime = replica.get("uptime_s")
            table.add_row(host, str(replica["index"]), f"{replica['active_state']}/{replica['sub_state']}",
                          "yes" if replica["ready"] else f"no ({replica.get('problem') or 'not listed'})",
                          str(replica["tensor_parallel_size"]), replica["gpus"] or "CPU", str(replica["port"]),
                          f"{uptime}s" if uptime is not None else "-", str(replica["restarts"]),
                          (replica.get("last_cause") or "-")[:80], release)
            if replica.get("dtype_note"):
                notes.append(f"{host} replica {replica['index']} runs in {replica['dtype']}: {replica['dtype_note']}")
    Console(width=180).print(table)
    for note in dict.fromkeys(notes):
        print(note)
    return 0 if _all_ready(reports) else 1


def _all_ready(reports: dict) -> bool:
    return bool(reports) and all(report.get("replicas") and all(r["ready"] for r in report["replicas"])
                                 for report in reports.values())


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
