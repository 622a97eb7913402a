"""`fm9g-deploy provision`: build hosts from the artifact mirror (playbooks/provision.yml)."""

from __future__ import annotations

import argparse

from fm9g_deploy.commands.common import add_ansible_run_args, add_inventory_args

DESCRIPTION = """\
Turn bare hosts into ones that can run FM9G: preflight checks (OS, disk, GPUs and driver),
the stack profile's Python env (conda or venv) with exactly the locked wheels, installed offline
with every hash required, and the model tarball, unpacked safely and switched in atomically.
Hosts fetch everything from the artifact mirror (mirror.url); fetch the artifacts first with
`fm9g-deploy artifacts fetch`. A second run changes nothing.

Tags (--tags): preflight, env, model.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("provision", help="install the env, wheels and model on hosts",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inventory_args(parser)
    add_ansible_run_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fm9g_deploy.ansible import print_summary, run_playbook, serving_hosts
    from fm9g_deploy.commands.common import config_for, inventory_path
    from fm9g_deploy.hostvars import load_stack, provision_vars

    inventory = inventory_path(args)
    config = config_for(args)
    serving_hosts(inventory, args.limit)  # else the playbook matches no host and "succeeds"
    stack = load_stack(config)
    if config.serving.serve_mode == "container":
        print("serve_mode container: the Python env lives in the serving image; hosts get the model only")
    result = run_playbook("provision.yml", inventory, extra_vars=provision_vars(stack), check=args.check,
                          diff=args.diff, limit=args.limit, tags=args.tags, verbose=args.verbose)
    print_summary(result, "provision (check mode)" if args.check else "provision")
    return 0
