"""Options and helpers shared by subcommands (argparse only at import time)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_inventory_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "-i", "--inventory", type=Path, required=required, metavar="INVENTORY",
        help="Ansible inventory file or directory (the sandbox prints its own)",
    )
    add_config_arg(parser)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="deployment config (default: fm9g.yml beside the inventory)",
    )


def add_ansible_run_args(parser: argparse.ArgumentParser) -> None:
    """--check/--diff/--limit/--tags, passed through to ansible-playbook."""
    parser.add_argument("--check", action="store_true", help="report what would change; change nothing")
    parser.add_argument("--diff", action="store_true", help="show file differences")
    parser.add_argument("--limit", metavar="PATTERN", help="only these hosts (Ansible host pattern)")
    parser.add_argument("--tags", metavar="TAGS", help="only these phases (comma-separated tags)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output (-vvv for SSH)")


def inventory_path(args: argparse.Namespace) -> Path:
    from fm9g_deploy.errors import UserError

    path: Path = args.inventory
    if not path.exists():
        raise UserError(f"inventory {path} not found; pass -i with an inventory file (the sandbox prints its own)")
    return path


def config_for(args: argparse.Namespace):
    """Load and validate the deployment config named by --config, or the one beside the inventory."""
    from fm9g_deploy.config import default_config_path, load_config

    path = args.config or default_config_path(getattr(args, "inventory", None))
    return load_config(path)
