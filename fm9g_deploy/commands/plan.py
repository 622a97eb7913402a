"""`fm9g-deploy plan`: choose tensor parallelism, replicas and GPU memory per host, and explain."""

from __future__ import annotations

import argparse
from pathlib import Path

from fm9g_deploy.commands.common import add_config_arg

HELP = """\
Decide how each host serves the model: the tensor-parallel size (TP), how many replicas (they
never share a GPU), which GPUs and port each replica gets, gpu_memory_utilization and
max_model_len, so that weights + the KV cache of one full-length sequence + a runtime reserve fit
in every GPU. The smallest TP that fits wins, which gives the most replicas.

  fm9g-deploy plan -i INVENTORY            read each host's GPUs with nvidia-smi, then plan
  fm9g-deploy plan --model fm9g-70b --gpus 4xA100-80GB
                                           plan a hypothetical host, no inventory needed
  fm9g-deploy plan --model fm9g-70b --gpus 2xA100-80GB --hosts 2
                                           plan a hypothetical fleet of 2 such hosts (host1, host2)

When no host holds the model alone and the profile's vLLM can span hosts (cuda130: tensor
parallel within a host, pipeline parallel across hosts, but tensor parallel across them for FM9G,
which upstream vLLM serves as MiniCPM and cannot pipeline; cuda121: tensor parallel across hosts
on Ray), the plan is one replica over the fewest identical hosts that hold it
(multi_host_replicas in --json). deploy does not serve such a replica yet.

Override any choice in the config's `serving` section (tensor_parallel_size, replicas_per_host,
gpu_memory_utilization, max_model_len); an override that cannot work is refused. Hosts without
a GPU get the CPU plan (profile cpu). Changes nothing.
"""

#: The most hypothetical hosts `--hosts` plans.
MAX_HYPOTHETICAL_HOSTS = 64


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="choose TP, replicas and GPU memory per host (and explain why)",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "-i", "--inventory", type=Path, metavar="INVENTORY",
        help="Ansible inventory file or directory: read every host's GPUs and plan for them")
    source.add_argument(
        "--gpus", metavar="COUNTxGPU",
        help="plan one hypothetical host instead, e.g. 4xA100-80GB, 1xH100 or 8x40GiB")
    parser.add_argument(
        "--hosts", type=int, metavar="N",
        help=f"with --gpus: plan N identical hypothetical hosts, host1..hostN (1 to {MAX_HYPOTHETICAL_HOSTS}; "
             "default 1)")
    add_config_arg(parser)
    parser.add_argument(
        "--model", metavar="NAME",
        help="model to plan for (default: model.name from the config, else fm9g-4b)")
    parser.add_argument("--limit", metavar="PATTERN", help="with -i: only these hosts (Ansible host pattern)")
    parser.add_argument("--json", action="store_true",
                        help="print the plan as JSON (per host: replicas with tensor_parallel_size, gpus, "
                             "port, gpu_memory_utilization, max_model_len)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from fm9g_deploy.planner import plan_deployment

    from fm9g_deploy.facts import engine_dtype_notes
    from fm9g_deploy.hostvars import model_serve_as
    from fm9g_deploy.profiles import load_profile

    hosts = _hypothetical_count(args)
    config = _config(args)
    probes: dict = {}
    if args.gpus is not None:
        names = [args.gpus.strip()] if hosts == 1 else [f"host{i}" for i in range(1, hosts + 1)]
        facts = {name: _hypothetical_host(args.gpus) for name in names}
        plan = plan_deployment(config, facts, check_driver=False)
    else:
        facts, probes = _gather_facts(args, config.serving.serve_mode)
        plan = plan_deployment(config, facts)
    profile = load_profile(config.profile)
    dtype_notes = engine_dtype_notes(probes, profile)
    serve_as = model_serve_as(config.model.name, profile)
    if args.json:
        print(json.dumps({**plan.to_dict(), "dtype_notes": dtype_notes, "serve_as": serve_as}, indent=2))
    else:
        _print_table(plan)
        for note in [architecture_note(config.model.name, profile, serve_as)] + dtype_notes:
            print(note)
    return 0


def architecture_note(model: str, profile, serve_as: str) -> str:
    """How the profile's vLLM serves the model's architecture (``serve_as``), in one line."""
    from fm9g_deploy.architecture import NATIVE, ORIGINAL_CONFIG
    from fm9g_deploy.catalog import get_model

    spec = get_model(model)
    if serve_as == NATIVE:
        return f"architecture: {spec.architecture}, served natively by the {profile.name} profile's vLLM"
    return (f"architecture: {spec.architecture}, served by upstream vLLM ({profile.name}) as {serve_as}; "
            f"provision rewrites config.json and keeps the checkpoint's own as {ORIGINAL_CONFIG}")


def _hypothetical_count(args: argparse.Namespace) -> int:
    """--hosts, checked: only with --gpus, 1 to MAX_HYPOTHETICAL_HOSTS."""
    from fm9g_deploy.errors import UserError

    if args.hosts is None:
        return 1
    if args.gpus is None:
        raise UserError("--hosts plans hypothetical hosts: use it with --gpus (with -i the inventory names the hosts)")
    if not 1 <= args.hosts <= MAX_HYPOTHETICAL_HOSTS:
        raise UserError(f"--hosts {args.hosts}: the number of hosts must be 1 to {MAX_HYPOTHETICAL_HOSTS}")
    return args.hosts


def _config(args: argparse.Namespace):
    from fm9g_deploy.catalog import model_names
    from fm9g_deploy.commands.common import config_for
    from fm9g_deploy.config import DeploymentConfig
    from fm9g_deploy.errors import UserError

    if args.gpus is not None and args.config is None:
        config = DeploymentConfig()  # a hypothetical host needs no config file
    else:
        config = config_for(args)
    if args.model is not None:
        if args.model not in model_names():
            raise UserError(f"unknown model {args.model!r}; choose one of {', '.join(model_names())}")
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": args.model})})
    return config


def _hypothetical_host(spec: str):
    """The planner's reading of --gpus; a number it cannot use (1x1e999GiB) is the operator's mistake."""
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.planner import hypothetical_host

    try:
        return hypothetical_host(spec)
    except (ValueError, OverflowError):
        raise UserError(f"--gpus {spec[:60]!r}: a number there is out of range; write e.g. 4xA100-80GB, "
                        "1xH100 or 8x40GiB") from None


def _gather_facts(args: argparse.Namespace, serve_mode: str):
    from fm9g_deploy.commands.common import inventory_path
    from fm9g_deploy.facts import gather_host_facts

    return gather_host_facts(inventory_path(args), limit=args.limit, serve_mode=serve_mode)


def _print_table(plan) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from fm9g_deploy.planner import GIB

    any_gpu = any(host.accelerator == "cuda" for host in plan.hosts.values())
    caption = ("Memory per GPU (GiB): weights + KV cache of one max_model_len sequence + runtime reserve / "
               "budget (gpu_memory_utilization x GPU memory). Headroom: budget left, and how many "
               "max_model_len sequences the KV cache holds at once.") if any_gpu else None
    table = Table(title=f"{plan.model} on profile {plan.profile}", title_justify="left", box=box.SIMPLE_HEAD,
                  caption=caption, caption_justify="left")
    # Numbers never wrap; the wordy columns wrap at spaces on narrow terminals.
    for column in ("Host", "GPUs", "TP", "Replicas", "Ports", "Memory per GPU", "Headroom"):
        table.add_column(column, no_wrap=column in ("TP", "Replicas", "Ports"), overflow="fold")
    spanning = {host: replica for replica in plan.multi_host_replicas for host in replica.hosts}
    for host in plan.hosts.values():
        ports = [replica.port for replica in host.replicas]
        port_text = "-" if not ports else str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"
        replicas, tp = str(len(host.replicas)), str(host.tensor_parallel_size)
        if host.host in spanning:  # its GPUs serve the replica over several hosts, listed below
            replica = spanning[host.host]
            tp = f"{replica.tensor_parallel_size}, PP {replica.pipeline_parallel_size}"
            replicas = f"1 (spans {len(replica.hosts)})"
            port_text = str(replica.port) if host.host == replica.hosts[0] else "-"
        elif not host.replicas:
            tp = "-"
        if host.accelerator == "cpu":
            gpus, memory, headroom = "none (CPU)", "-", "-"
        else:
            gpus = f"{host.gpu_count} x {host.gpu_name} ({host.gpu_memory_mib / 1024:.0f} GiB)"
            memory, headroom = "-", "-"
            if host.memory_per_gpu is not None:
                m = host.memory_per_gpu
                memory = (f"{m.weights / GIB:.1f} + {m.kv_cache_one_sequence / GIB:.1f} + {m.reserve / GIB:.1f}"
                          f" / {m.budget / GIB:.1f}")
                headroom = f"{m.headroom / GIB:.1f} GiB, {m.full_length_sequences} seq"
        table.add_row(host.host, gpus, tp, replicas, port_text, memory, headroom)
    console = Console(highlight=False)
    console.print(table)
    for host in plan.hosts.values():
        for replica in host.replicas:
            where = (f"GPUs {','.join(map(str, replica.gpus))}, gpu_memory_utilization "
                     f"{replica.gpu_memory_utilization:g}" if replica.gpus else "CPU")
            # soft_wrap: one line per replica and note, whole, for grep and copy-paste
            console.print(f"{host.host} replica {replica.index}: port {replica.port}, {where}, "
                          f"max_model_len {replica.max_model_len}", soft_wrap=True)
        for note in host.notes:
            console.print(f"{host.host}: {note}", soft_wrap=True)
    for replica in plan.multi_host_replicas:
        name = f"replica over {', '.join(replica.hosts)}"
        where = (f"{replica.gpus_per_host} GPU(s) per host, gpu_memory_utilization "
                 f"{replica.gpu_memory_utilization:g}" if replica.gpus_per_host else "CPU")
        console.print(f"{name}: head {replica.hosts[0]}, port {replica.port}, {replica.parallelism} parallel: "
                      f"tensor_parallel_size {replica.tensor_parallel_size}, pipeline_parallel_size "
                      f"{replica.pipeline_parallel_size}, {where}, max_model_len {replica.max_model_len}",
                      soft_wrap=True)
        for note in replica.notes:
            console.print(f"{name}: {note}", soft_wrap=True)
