"""`fm9g-deploy deploy`: run the planned replicas behind a gateway (playbooks/serve.yml)."""

from __future__ import annotations

import argparse

from fm9g_deploy.commands.common import add_ansible_run_args, add_inventory_args

DESCRIPTION = """\
Serve the model on every provisioned host: one systemd unit per replica as the planner lays
them out (tensor parallelism, GPUs, ports), an nginx gateway on the service port that allows
only the client routes, and a readiness check that is a real request. When the config, env or
model changed, replicas are updated one at a time (hosts in batches): taken out of the gateway,
drained, restarted, checked, put back. A failed replica stops the rollout; the rest keep serving.

Tags (--tags): gateway, serve.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("deploy", help="serve the model: replicas, gateway, rolling updates",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inventory_args(parser)
    add_ansible_run_args(parser)
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="hosts updated at once (default: 1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fm9g_deploy.ansible import print_summary, run_playbook
    from fm9g_deploy.apikey import resolve_api_key
    from fm9g_deploy.commands.common import config_for, inventory_path
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.facts import gather_gpu_facts
    from fm9g_deploy.hostvars import load_stack, serve_vars
    from fm9g_deploy.planner import plan_deployment

    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1")
    inventory = inventory_path(args)
    config = config_for(args)
    stack = load_stack(config)
    plan = plan_deployment(config, gather_gpu_facts(inventory, limit=args.limit))
    api_key, source = resolve_api_key(config, inventory)
    print(f"API key: {source}")
    extra_vars = {**serve_vars(stack, plan, api_key), "fm9g_rollout_batch": args.batch}
    result = run_playbook("serve.yml", inventory, extra_vars=extra_vars, check=args.check, diff=args.diff,
                          limit=args.limit, tags=args.tags, verbose=args.verbose)
    print_summary(result, "deploy (check mode)" if args.check else "deploy")
    return 0
