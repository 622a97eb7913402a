"""`fm9g-deploy doctor`: check the control node; one line per failure, with its fix."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Check that this machine (the control node) can run fm9g-deploy. Prints one line per check,
`ok   <name>: <detail>` or `FAIL <name>: <detail>; fix: <fix>`, then a summary; exits 1 when any
check fails, 0 when all pass. Changes nothing.

Checks:
  python            this Python satisfies the project's requires-python (>=3.11)
  ansible-core      ansible-core is importable and within the pinned range (>=2.17,<2.20)
  ansible-playbook  ansible-playbook is beside this Python (a venv's bin) or on PATH
  ansible content   the project's ansible.cfg, playbooks/, roles/, library/, module_utils/ and
                    locks/ are installed (if not, reinstall the wheel)
  ssh client        an `ssh` client is on PATH
  ssh key           a private key is available: the SSH agent (SSH_AUTH_SOCK) lists one, or
                    ~/.ssh/id_ed25519, id_ecdsa or id_rsa exists; with -i, every key file the
                    inventory names (ansible_ssh_private_key_file) exists and is not readable by
                    group or others
  docker engine     the Docker engine answers (the sandbox needs it); a failure only with
                    --sandbox or without -i, else shown as `skip`
  disk              the artifact cache's disk (FM9G_DEPLOY_CACHE_DIR, else ~/.cache/fm9g-deploy,
                    or its nearest existing parent) has --min-free-gib GiB free
  inventory, hosts  with -i: the inventory parses and has hosts, and every host answers the
                    ping playbook (SSH, Python); one line per host that does not
"""


def _gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this machine can run fm9g-deploy; print each failure with its fix",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-i", "--inventory", type=Path, metavar="INVENTORY",
        help="also check this inventory: its key files, and that every host answers (runs playbooks/ping.yml)")
    parser.add_argument("--sandbox", action="store_true",
                        help="the Docker engine is required (the sandbox's); implied without -i")
    parser.add_argument("--min-free-gib", type=_gib, default=20.0, metavar="GIB",
                        help="free space the artifact cache's disk needs (default: 20)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {name, ok, detail, fix} instead of lines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from fm9g_deploy.commands.common import inventory_path
    from fm9g_deploy.doctor import run_checks, summary

    inventory = inventory_path(args) if args.inventory is not None else None
    results = run_checks(inventory, sandbox=args.sandbox, min_free_gib=args.min_free_gib)
    if args.json:
        print(json.dumps([result.as_dict() for result in results], indent=2))
    else:
        for result in results:
            print(result.line())
        print(summary(results))
    return 1 if any(not result.ok for result in results) else 0
