"""What monitoring costs the service: serving throughput with Prometheus scraping the fleet, against
the same load with Prometheus stopped, in one run. Goal: under 1 % fewer output tokens per second.

    .venv/bin/python benchmarks/bench_monitoring.py -i INVENTORY [--monitoring-host NAME]
    .venv/bin/python benchmarks/bench_monitoring.py [--sandbox fm9g-sandbox]

Needs a deployed sandbox or fleet with monitoring.enabled (the sandbox's config has it). Prometheus
runs on the monitoring host: monitoring.host of the config, else the first `gateway` host, else the
first `serving` host (--monitoring-host overrides). The load goes from this machine through the
gateway (the first `gateway` host's, else the first serving host's), with the project's load
generator: every round the same --requests streamed completions of exactly --max-tokens tokens,
--concurrency in flight, prompts generated from a fixed seed, after one unmeasured warm-up round.

Rounds come in off/on pairs, every other pair reversed (off on, on off, off on, ...), so a drift
over the run (heat, caches, other work) weighs on both sides alike. "off": `systemctl stop
prometheus` on the monitoring host; "on": `systemctl start prometheus`, then its /-/ready answers
200 (asked on that host) and one scrape interval passes. Only the scraping stops: the exporters,
mtail and the metrics door keep running. Host commands go through Ansible ad hoc (an argv, never a
shell string), with the project's Ansible settings. Prometheus is left running whatever happens.

Prints each round's output tokens per second, the median of each side, the ratio on/off and the
overhead in percent; --json FILE also writes the figures. Every round is bounded (a fixed number
of requests, a per-request timeout and a deadline). Throughput that varies between rounds of one
side by more than the goal cannot tell the overhead to that precision: the verdict then says so.
A firmer figure on a small machine is the CPU the monitoring processes used during the "on"
rounds (their own process_cpu_seconds_total, from Prometheus afterwards) against the busy CPU of
the busiest host (node exporter). Exit status: 0 within the goal, 1 over it, 2 when it could not
measure or the rounds were too noisy to tell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fm9g_deploy.ansible import SERVING_GROUP, ansible_env, ansible_executable, read_inventory  # noqa: E402
from fm9g_deploy.bench.loadgen import LoadSettings, run_load  # noqa: E402
from fm9g_deploy.bench.metrics import compute_metrics  # noqa: E402
from fm9g_deploy.bench.workload import generated_prompts  # noqa: E402
from fm9g_deploy.errors import OperationFailed, UserError  # noqa: E402

OFF, ON = "off", "on"
GOAL_PERCENT = 1.0
GATEWAY_GROUP = "gateway"
#: How long one Ansible ad-hoc command may take (SSH included).
ANSIBLE_TIMEOUT_S = 180


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--sandbox", default="fm9g-sandbox", help="a deployed sandbox (default: the demo's)")
    where.add_argument("-i", "--inventory", type=Path, help="the inventory of a deployed fleet or sandbox")
    parser.add_argument("--monitoring-host", metavar="NAME", help="the host that runs Prometheus "
                        "(default: monitoring.host, else the first gateway host, else the first serving host)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs (default: 3)")
    parser.add_argument("--requests", type=int, default=48, help="completions per round (default: 48)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens of every completion")
    parser.add_argument("--prompt-words", type=int, default=24, help="words per generated prompt")
    parser.add_argument("--seed", type=int, default=0, help="the prompts' seed")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--round-timeout", type=float, default=600.0, help="seconds per round, then it is cut")
    parser.add_argument("--ready-timeout", type=float, default=180.0,
                        help="seconds Prometheus gets to be ready after a start")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    for name, high in (("rounds", 20), ("requests", 10_000), ("concurrency", 256), ("max_tokens", 4096),
                       ("prompt_words", 4096)):
        if not 1 <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be 1 to {high}")
    if args.requests * args.max_tokens > 200_000:
        parser.error("keep the load bounded: --requests x --max-tokens at most 200000 tokens per round")
    for name in ("request_timeout", "round_timeout", "ready_timeout"):
        if not 0 < getattr(args, name) <= 3600:
            parser.error(f"--{name.replace('_', '-')} must be more than 0 and at most 3600 seconds")
    return args


# -- the pure parts ------------------------------------------------------------------------------

def round_order(pairs: int) -> list[str]:
    """Monitoring off or on, per round: ABBA (off on, on off, off on, ...), so a steady drift over the
    run (heat, caches, other work) weighs on both sides alike."""
    order: list[str] = []
    for pair in range(pairs):
        order += [OFF, ON] if pair % 2 == 0 else [ON, OFF]
    return order


def first_host(groups: dict[str, list[str]]) -> str:
    """The first `gateway` host, else the first `serving` host: the fleet's front door."""
    for group in (GATEWAY_GROUP, SERVING_GROUP):
        if groups.get(group):
            return groups[group][0]
    raise UserError(f"the inventory has no `{GATEWAY_GROUP}` or `{SERVING_GROUP}` host; pass a deployed fleet's")


def summarize(rounds: list[dict], goal_percent: float = GOAL_PERCENT) -> dict:
    """Each side's median output tokens/s (a median: one disturbed round does not move it), the ratio
    on/off, the overhead (percent of throughput lost with scraping on; negative: on was faster) and
    each side's spread (max - min over the median, percent): when the spread is larger than the goal,
    the rounds are too noisy to tell the overhead to that precision."""
    sides = {}
    for side in (OFF, ON):
        values = [r["output_throughput"] for r in rounds if r["monitoring"] == side]
        if not values:
            raise ValueError(f"no round with monitoring {side}")
        median = statistics.median(values)
        sides[side] = {"rounds": len(values), "median": median, "min": min(values), "max": max(values),
                       "spread_percent": (max(values) - min(values)) / median * 100 if median else float("inf")}
    off, on = sides[OFF]["median"], sides[ON]["median"]
    if off <= 0:
        raise ValueError("no output tokens with monitoring off: nothing was served")
    ratio = on / off
    overhead = (1.0 - ratio) * 100
    noisy = max(sides[OFF]["spread_percent"], sides[ON]["spread_percent"]) > goal_percent
    return {"off": sides[OFF], "on": sides[ON], "ratio": ratio, "overhead_percent": overhead,
            "goal_percent": goal_percent, "within_goal": overhead < goal_percent,
            "noisy": noisy, "resolved": not noisy,
            "failed_requests": sum(r.get("failed", 0) for r in rounds)}


#: The processes monitoring adds, by their Prometheus job: Prometheus itself, and on every host the
#: node exporter, the nginx exporter and mtail (their own process_cpu_seconds_total).
MONITORING_JOBS = ("prometheus", "fm9g-node", "fm9g-nginx", "fm9g-gateway-log")


def cpu_queries(end: float, seconds: float) -> dict[str, str]:
    """PromQL for the CPU seconds spent in the window of ``seconds`` before ``end`` (unix time): by
    the monitoring processes (all hosts), and busy (not idle) on each host (node exporter)."""
    window = f"[{max(1, round(seconds))}s] @ {end:.3f}"
    jobs = "|".join(MONITORING_JOBS)
    return {"monitoring": f'sum(increase(process_cpu_seconds_total{{job=~"{jobs}"}}{window}))',
            "busy_by_host": f'sum by (host) (increase(node_cpu_seconds_total{{mode!="idle"}}{window}))'}


def cpu_share(rounds: list[dict]) -> dict | None:
    """Over the rounds with monitoring on: the cores its processes used, and their share of the
    busiest host's busy CPU (on the sandbox every host container reports the one machine's CPU, so
    that is the machine's). None when no round has CPU figures."""
    measured = [r["cpu"] for r in rounds if r["monitoring"] == ON and r.get("cpu")]
    if not measured:
        return None
    seconds = sum(c["seconds"] for c in measured)
    monitoring = sum(c["monitoring"] for c in measured)
    busy = sum(c["busy"] for c in measured)
    return {"rounds": len(measured), "monitoring_cores": monitoring / seconds if seconds else 0.0,
            "busy_cores": busy / seconds if seconds else 0.0,
            "share_percent": monitoring / busy * 100 if busy else float("nan")}


def adhoc_argv(ansible: str, host: str, inventory: Path, module: str, module_args: str) -> list[str]:
    """`ansible HOST -i INVENTORY -m MODULE -a ARGS` as an argv: the module's arguments are one
    element, never parsed by a shell."""
    return [ansible, host, "-i", str(inventory), "-m", module, "-a", module_args]


def ansible_message(output: str) -> str:
    """What a failed ad-hoc command said: the module's last "msg", else the output's end."""
    found = re.findall(r'"msg": "((?:[^"\\]|\\.)*)"', output)
    return found[-1].replace("\\n", " ").strip()[:400] if found else output.strip()[-400:]


# -- the hosts -----------------------------------------------------------------------------------

@dataclass
class Target:
    inventory: Path
    gateway_host: str
    url: str
    api_key: str
    model: str
    monitoring_host: str
    prometheus_port: int
    scrape_interval_s: int


def resolve_target(inventory: Path, monitoring_host: str | None) -> Target:
    """Where the load goes, with which key and model, and where Prometheus runs (from the inventory
    and the deployment config beside it, as `deploy` reads them)."""
    from ansible.vars.manager import VariableManager

    from fm9g_deploy.config import default_config_path, load_config
    from fm9g_deploy.monitoring import monitoring_host as configured_monitoring_host
    from fm9g_deploy.verification import deployment_key, gateway_url

    config = load_config(default_config_path(inventory))
    manager, loader, _ = read_inventory(inventory)
    groups = {group: [host.name for host in manager.get_hosts(group)]
              for group in (GATEWAY_GROUP, SERVING_GROUP) if group in manager.groups}
    front = first_host(groups)
    if monitoring_host:
        names = {host.name for host in manager.get_hosts("all")}
        if monitoring_host not in names:  # ad hoc on no host "succeeds" doing nothing
            raise UserError(f"--monitoring-host {monitoring_host!r} is not a host of {inventory}")
    elif not config.monitoring.enabled:
        raise UserError(f"monitoring is off in {default_config_path(inventory)} (monitoring.enabled); "
                        "deploy with it on, or name the Prometheus host with --monitoring-host")
    else:
        monitoring_host = configured_monitoring_host(config, inventory)
    host_vars = VariableManager(loader=loader, inventory=manager).get_vars(host=manager.get_host(front))
    return Target(inventory=inventory, gateway_host=front,
                  url=gateway_url(front, host_vars, config.serving.port),
                  api_key=deployment_key(config, inventory), model=config.serving.served_model_name,
                  monitoring_host=monitoring_host, prometheus_port=config.monitoring.prometheus_port,
                  scrape_interval_s=config.monitoring.scrape_interval_s)


class Prometheus:
    """The Prometheus service on the monitoring host, switched through Ansible ad hoc."""

    def __init__(self, target: Target, ready_timeout_s: float) -> None:
        self.target, self.ready_timeout_s = target, ready_timeout_s
        self.ansible = ansible_executable("ansible")

    def _run(self, module: str, module_args: str) -> subprocess.CompletedProcess:
        argv = adhoc_argv(self.ansible, self.target.monitoring_host, self.target.inventory.resolve(), module,
                          module_args)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=ANSIBLE_TIMEOUT_S, cwd=ROOT,
                                  env={**os.environ, **ansible_env()})
        except subprocess.TimeoutExpired:
            raise OperationFailed(f"ansible {module} on {self.target.monitoring_host} took over "
                                  f"{ANSIBLE_TIMEOUT_S} s") from None

    def _systemd(self, state: str) -> None:
        done = self._run("ansible.builtin.systemd", f"name=prometheus state={state}")
        if done.returncode != 0:
            raise OperationFailed(f"prometheus {state} on {self.target.monitoring_host} failed: "
                                  f"{ansible_message(done.stdout + done.stderr)}")

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.target.prometheus_port}/-/ready"
        return self._run("ansible.builtin.uri", f"url={url} status_code=200 timeout=5").returncode == 0

    def query(self, promql: str) -> list[dict]:
        """An instant query, asked on the monitoring host (Prometheus listens on its loopback only)."""
        from urllib.parse import quote

        url = f"http://127.0.0.1:{self.target.prometheus_port}/api/v1/query?query={quote(promql, safe='')}"
        done = self._run("ansible.builtin.uri", f"url={url} return_content=true timeout=10")
        found = re.search(r"=> (\{.*\})\s*$", done.stdout, re.S)
        if done.returncode != 0 or not found:
            raise OperationFailed(f"querying Prometheus on {self.target.monitoring_host} failed: "
                                  f"{ansible_message(done.stdout + done.stderr)}")
        return json.loads(found.group(1))["json"]["data"]["result"]

    def cpu(self, end: float, seconds: float) -> dict:
        """CPU seconds of the monitoring processes, and the busiest host's busy CPU seconds, over the
        ``seconds`` before ``end``."""
        queries = cpu_queries(end, seconds)
        monitoring = sum(float(r["value"][1]) for r in self.query(queries["monitoring"]))
        busy = max((float(r["value"][1]) for r in self.query(queries["busy_by_host"])), default=0.0)
        return {"seconds": seconds, "monitoring": monitoring, "busy": busy}

    def stop(self) -> None:
        self._systemd("stopped")

    def start(self, settle: bool = True) -> None:
        """Started and ready, then (``settle``) one scrape interval on: a round meets scraping as it
        runs for good, not a start-up."""
        self._systemd("started")
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise OperationFailed(f"Prometheus on {self.target.monitoring_host} was not ready within "
                                      f"{self.ready_timeout_s:g} s of its start")
            time.sleep(1)
        if settle:
            time.sleep(self.target.scrape_interval_s)


# -- the load ------------------------------------------------------------------------------------

def load_round(target: Target, args: argparse.Namespace, prompts: list[str]) -> dict:
    """One round: every prompt through the gateway; its figures."""
    settings = LoadSettings(base_url=target.url, api_key=target.api_key, model=target.model,
                            output_len=args.max_tokens, concurrency=args.concurrency, seed=args.seed,
                            request_timeout_s=args.request_timeout, max_duration_s=args.round_timeout)
    run = asyncio.run(run_load(settings, prompts))
    figures = compute_metrics(run.results, run.duration_s)
    return {key: figures[key] for key in ("output_throughput", "duration_s", "completed", "failed", "errors",
                                          "total_output_tokens")} | {"cut_short": run.cut_short}


def print_summary(summary: dict) -> None:
    print(f"\n{'monitoring':<12}{'rounds':>7}{'median tok/s':>14}{'min':>10}{'max':>10}{'spread':>9}")
    for side in (OFF, ON):
        row = summary[side]
        print(f"{side:<12}{row['rounds']:>7}{row['median']:>14.1f}{row['min']:>10.1f}{row['max']:>10.1f}"
              f"{row['spread_percent']:>8.1f}%")
    verdict = "WITHIN THE GOAL" if summary["within_goal"] else "OVER THE GOAL"
    if not summary["resolved"]:
        verdict = "NOT RESOLVED: the rounds vary more than the goal"
    print(f"\noutput tokens/s with scraping / without: {summary['ratio']:.4f}; overhead "
          f"{summary['overhead_percent']:+.2f} % (goal: under {summary['goal_percent']:g} %): {verdict}")
    if summary["noisy"]:
        print(f"note: a side's rounds spread over more than {summary['goal_percent']:g} %; more --rounds or "
              "--requests give a firmer figure")
    cpu = summary.get("cpu")
    if not cpu:
        print("CPU of monitoring: not measured (rounds shorter than three scrape intervals; raise --requests)")
    else:
        print(f"CPU of monitoring (Prometheus, node and nginx exporters, mtail; {cpu['rounds']} rounds on): "
              f"{cpu['monitoring_cores']:.4f} cores against {cpu['busy_cores']:.3f} busy cores on the busiest "
              f"host: {cpu['share_percent']:.2f} % of the CPU the service used")
    if summary["failed_requests"]:
        print(f"note: {summary['failed_requests']} request(s) failed; their tokens are missing from the figures")


def main(argv: list[str] | None = None) -> int:
    from fm9g_deploy.paths import state_dir

    args = parse_args(argv)
    inventory = args.inventory or state_dir() / "sandboxes" / args.sandbox / "hosts.yml"
    if not inventory.is_file():
        print(f"bench_monitoring: {inventory} not found; deploy a sandbox (`make demo`) or pass -i", file=sys.stderr)
        return 2
    try:
        target = resolve_target(inventory, args.monitoring_host)
    except (UserError, OperationFailed) as exc:
        print(f"bench_monitoring: {exc}", file=sys.stderr)
        return 2
    order = round_order(args.rounds)
    prompts = generated_prompts(args.requests, args.prompt_words, args.seed)
    print(f"monitoring benchmark: {inventory}; load through {target.gateway_host}'s gateway ({target.url}); "
          f"Prometheus on {target.monitoring_host}, scraping every {target.scrape_interval_s} s; "
          f"{args.requests} completions x {args.max_tokens} tokens per round, concurrency {args.concurrency}; "
          f"rounds: {' '.join(order)}", flush=True)
    prometheus = Prometheus(target, args.ready_timeout)
    if not prometheus.ready():
        print(f"bench_monitoring: Prometheus on {target.monitoring_host} does not answer "
              f"127.0.0.1:{target.prometheus_port}/-/ready; deploy with monitoring on first", file=sys.stderr)
        return 2
    rounds: list[dict] = []
    failed = False
    try:
        # A warm-up with monitoring as deployed (on): the first measured round must not pay for cold
        # caches (the same prompts come back every round).
        warm = load_round(target, args, prompts)
        print(f"warm-up (monitoring on, not counted): {warm['output_throughput']:8.1f} output tok/s", flush=True)
        state = ON
        for number, side in enumerate(order, 1):
            if side != state:
                if side == OFF:
                    prometheus.stop()
                else:
                    prometheus.start()
                state = side
            started = time.time()
            figures = load_round(target, args, prompts)
            ended = time.time()
            rounds.append({"round": number, "monitoring": side, "window": [started, ended]} | figures)
            print(f"round {number:2}: monitoring {side:<3} {figures['output_throughput']:8.1f} output tok/s  "
                  f"({figures['completed']} ok, {figures['failed']} failed, {figures['duration_s']:.1f} s)", flush=True)
    except (UserError, OperationFailed) as exc:
        print(f"bench_monitoring: {exc}", file=sys.stderr)
        failed = True
    finally:
        # Whatever happened (an error, Ctrl-C), the fleet keeps its monitoring.
        try:
            prometheus.start(settle=False)
            print(f"Prometheus on {target.monitoring_host}: running and ready", flush=True)
        except OperationFailed as exc:
            failed = True
            print(f"bench_monitoring: Prometheus may be left stopped on {target.monitoring_host}; start it "
                  f"(systemctl start prometheus there): {exc}", file=sys.stderr)
    if failed:
        return 2
    try:
        # Asked once Prometheus runs again: it holds every "on" round's samples.
        time.sleep(target.scrape_interval_s + 1)
        for entry in rounds:
            # increase() needs two samples inside the window: shorter rounds get no CPU figure.
            if entry["monitoring"] == ON and entry["duration_s"] >= 3 * target.scrape_interval_s:
                start, end = entry["window"]
                entry["cpu"] = prometheus.cpu(end, end - start)
    except OperationFailed as exc:
        print(f"bench_monitoring: no CPU figures: {exc}", file=sys.stderr)
    try:
        summary = summarize(rounds)
        summary["cpu"] = cpu_share(rounds)
    except ValueError as exc:
        print(f"bench_monitoring: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.json:
        workload = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                    if key != "json"}
        args.json.write_text(json.dumps({
            "workload": workload, "inventory": str(inventory), "gateway_url": target.url,
            "monitoring_host": target.monitoring_host, "scrape_interval_s": target.scrape_interval_s,
            "order": order, "warmup": warm, "rounds": rounds, "summary": summary}, indent=2))
    if not summary["resolved"]:
        return 2
    return 0 if summary["within_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
