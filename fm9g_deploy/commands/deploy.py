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
When the plan has a single replica in all, restarting it is refused unless --accept-downtime.

Each replica runs under a supervisor that brings a dead engine back by itself (with a growing
pause; marked failed after serving.crash_limit crashes in serving.crash_window_s), and each
gateway takes a replica that fails /health out of rotation until it serves again. A replica whose
process is gone while deploy waits for it stops the rollout within seconds, with its journal.
On CPU profiles the engine is first run once in the planned dtype; if it faults, float32 is used.

A replica the plan spreads over several hosts (a model no host holds; serving.hosts_per_replica on
CPU hosts) runs as a head (the API) and headless nodes that join its engine over the hosts'
network (inventory: fm9g_interconnect_address / fm9g_interconnect_interface, else the default
route's); the head rolls with its nodes. Not on Ray (profile cuda121) nor in container mode yet.

With monitoring.enabled (on in the sandbox), every host also gets a metrics door (nginx on
monitoring.scrape_port, open to the monitoring host only) in front of its replicas' /metrics, its
node exporter, nginx exporter and gateway-log metrics (mtail), and the monitoring host (the
gateway host by default) runs Prometheus with the plan's targets and the alerting rules.

Tags (--tags): gateway, serve, monitoring.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("deploy", help="serve the model: replicas, gateway, rolling updates",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inventory_args(parser)
    add_ansible_run_args(parser)
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="hosts updated at once (default: 1)")
    parser.add_argument("--accept-downtime", action="store_true",
                        help="allow restarting the plan's only replica (refused otherwise: clients would "
                             "have no replica while it restarts)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fm9g_deploy.ansible import print_summary, run_playbook, serving_hosts
    from fm9g_deploy.apikey import resolve_api_key
    from fm9g_deploy.commands.common import config_for, inventory_path
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.facts import gather_gpu_facts, read_hosts
    from fm9g_deploy.hostvars import load_stack, serve_vars
    from fm9g_deploy.monitoring import monitoring_host, monitoring_vars
    from fm9g_deploy.planner import plan_deployment, refuse_multi_host

    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1")
    inventory = inventory_path(args)
    config = config_for(args)
    serving_hosts(inventory, args.limit)  # else the playbook matches no host and "succeeds"
    stack = load_stack(config)
    hosts = read_hosts(inventory, limit=args.limit, serve_mode=config.serving.serve_mode)
    plan = plan_deployment(config, hosts.gpus)
    refuse_multi_host(plan, "deploy")  # its hosts would get no replica: refused, not silently skipped
    api_key, source = resolve_api_key(config, inventory)
    print(f"API key: {source}")
    extra_vars = {**serve_vars(stack, plan, api_key, accept_downtime=args.accept_downtime, networks=hosts.networks),
                  "fm9g_rollout_batch": args.batch}
    for replica in plan.multi_host_replicas:
        print(f"one replica over {', '.join(replica.hosts)}: the head {replica.hosts[0]} serves it on port "
              f"{replica.port}; the other hosts run headless nodes that join it")
    whole = plan
    if args.limit and (extra_vars["fm9g_rollout_fleet_replicas"] < 2 or config.monitoring.enabled):
        # --limit plans the named hosts only; whether their one replica is the fleet's only one, and
        # what Prometheus scrapes, are questions about every serving host.
        whole = plan_deployment(config, gather_gpu_facts(inventory))
        refuse_multi_host(whole, "deploy")
        extra_vars["fm9g_rollout_fleet_replicas"] = (sum(len(host.replicas) for host in whole.hosts.values())
                                                     + len(whole.multi_host_replicas))
    host = monitoring_host(config, inventory) if config.monitoring.enabled else None
    extra_vars.update(monitoring_vars(config, host, whole))
    if host:
        print(f"monitoring: Prometheus on {host} (127.0.0.1:{config.monitoring.prometheus_port} there), "
              f"every host's metrics door on port {config.monitoring.scrape_port}")
    result = run_playbook("serve.yml", inventory, extra_vars=extra_vars, check=args.check, diff=args.diff,
                          limit=args.limit, tags=args.tags, verbose=args.verbose)
    print_summary(result, "deploy (check mode)" if args.check else "deploy")
    return 0
