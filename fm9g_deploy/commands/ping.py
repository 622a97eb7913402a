"""`fm9g-deploy ping`: prove every host of an inventory answers Ansible over SSH."""

from __future__ import annotations

import argparse

from fm9g_deploy.commands.common import add_inventory_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ping", help="check that every host answers Ansible (SSH, Python)",
        description="Run playbooks/ping.yml: connect to every host over SSH, run Python there, and "
                    "print each host's OS and Python version. Changes nothing.")
    add_inventory_args(parser)
    parser.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible host pattern)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fm9g_deploy.ansible import run_playbook
    from fm9g_deploy.commands.common import inventory_path
    from fm9g_deploy.errors import OperationFailed

    inventory = inventory_path(args)
    result = run_playbook("ping.yml", inventory, limit=args.limit, quiet=True)
    for host, counts in result.stats.items():
        state = "unreachable" if counts["unreachable"] else "failed" if counts["failures"] else "ok"
        print(f"{host}: {state}")
    if not result.ok or not result.stats:
        detail = "; ".join(result.problems) or f"ansible-playbook exited with {result.rc}"
        raise OperationFailed(f"not every host answered: {detail}")
    return 0
