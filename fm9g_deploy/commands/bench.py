"""`fm9g-deploy bench`: a bounded load test of a served endpoint, with vLLM's metric definitions."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Send a fixed workload to an OpenAI-compatible /v1/completions endpoint and report what
`vllm bench serve` reports: request throughput, output tokens/s, TTFT, TPOT, ITL and
end-to-end latency (mean, p50, p90, p99) and error counts. Every request streams and asks
for exactly --output-len tokens (max_tokens with ignore_eos), so output lengths are fixed.

Prompts are random-ish words sized from the first request to about --input-len tokens (the
same seed gives the same prompts), or the prompts of --prompts-file (one per line, or JSON
Lines with a "prompt" field), reused in turn when --num-prompts asks for more.

The run is bounded: --num-prompts requests after --warmup, each within --timeout, the whole
within --max-duration; then it stops by itself. Aim it only at your own service: a loopback
URL or the project's sandbox gateway (`fm9g-deploy sandbox` prints them). The first request
checks the endpoint; a wrong key, an unknown model or an unreachable URL stops with exit 2.
Exit 1 when any measured request failed.
"""

MAX_PROMPTS = 10_000
#: Longest --input-len / --output-len in tokens (prompts are built in memory from it).
MAX_LEN = 1 << 20
MAX_REQUEST_RATE = 10_000.0
#: --timeout and --max-duration: the run is promised to be bounded, so inf is no answer.
MAX_SECONDS = 7 * 86400


def register(subparsers) -> None:
    from fm9g_deploy.bench.endpoint import add_endpoint_args

    parser = subparsers.add_parser("bench", help="load-test the served endpoint (TTFT, TPOT, ITL, tok/s)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_endpoint_args(parser)
    parser.add_argument("--num-prompts", type=int, metavar="N",
                        help="measured requests (default: 32, or the prompts in --prompts-file)")
    parser.add_argument("--input-len", type=int, default=128, metavar="N",
                        help="prompt length in tokens, about (default: 128; ignored with --prompts-file)")
    parser.add_argument("--output-len", type=int, default=128, metavar="N",
                        help="tokens generated per request, exactly (default: 128)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, metavar="C",
                      help="keep C requests in flight (default: 4 when no --request-rate)")
    load.add_argument("--request-rate", type=float, metavar="R",
                      help="send R requests per second (Poisson arrivals, seeded) instead")
    parser.add_argument("--warmup", type=int, default=0, metavar="N",
                        help="requests sent before the measured run, not counted (default: 0)")
    parser.add_argument("--prompts-file", type=Path, metavar="FILE",
                        help="use these prompts: one per line, or .jsonl with a \"prompt\" field")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed for the prompts and arrival times (default: 0)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="give up on one request after this long (default: 300)")
    parser.add_argument("--max-duration", type=float, default=900.0, metavar="SECONDS",
                        help="stop the measured run after this long; unfinished requests fail (default: 900)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also write latency histograms and tokens/s over time to FILE.png")
    parser.set_defaults(handler=run)


def check_plot_target(path: Path) -> None:
    """--plot needs a .png name in an existing folder and matplotlib (the `plot` extra)."""
    import importlib.util

    from fm9g_deploy.errors import UserError

    if path.suffix.lower() != ".png":
        raise UserError(f"--plot {path} must name a .png file")
    if not path.resolve().parent.is_dir():
        raise UserError(f"--plot {path}: folder {path.resolve().parent} does not exist; create it first")
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib; install it with `pip install 'fm9g-deploy[plot]'` "
                        "or leave --plot out")


def settings_from(args: argparse.Namespace):
    """Check the options (UserError for nonsense) and build the load generator's settings."""
    from fm9g_deploy.bench.endpoint import api_key_from, base_url
    from fm9g_deploy.bench.loadgen import LoadSettings
    from fm9g_deploy.errors import UserError

    if args.concurrency is not None and args.concurrency < 1:
        raise UserError(f"--concurrency {args.concurrency} must be at least 1")
    if args.concurrency is not None and args.concurrency > MAX_PROMPTS:
        raise UserError(f"--concurrency {args.concurrency} must be at most {MAX_PROMPTS}")
    # `not x > 0` (rather than x <= 0) also refuses nan; the upper bounds refuse inf.
    if args.request_rate is not None and not 0 < args.request_rate <= MAX_REQUEST_RATE:
        raise UserError(f"--request-rate {args.request_rate:g} must be above 0 and at most {MAX_REQUEST_RATE}")
    if args.num_prompts is not None and not 1 <= args.num_prompts <= MAX_PROMPTS:
        raise UserError(f"--num-prompts {args.num_prompts} must be 1 to {MAX_PROMPTS}")
    for name in ("input_len", "output_len"):
        if not 1 <= getattr(args, name) <= MAX_LEN:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be 1 to {MAX_LEN}")
    if args.warmup < 0 or args.warmup > MAX_PROMPTS:
        raise UserError(f"--warmup {args.warmup} must be 0 to {MAX_PROMPTS}")
    if not 0 < args.timeout <= MAX_SECONDS or not 0 < args.max_duration <= MAX_SECONDS:
        raise UserError(f"--timeout and --max-duration must be above 0 and at most {MAX_SECONDS} seconds")
    if args.plot is not None:
        check_plot_target(args.plot)
    concurrency = args.concurrency if args.concurrency is not None else (None if args.request_rate else 4)
    return LoadSettings(
        base_url=base_url(args.url), api_key=api_key_from(args), model=args.model,
        output_len=args.output_len, concurrency=concurrency, request_rate=args.request_rate,
        warmup=args.warmup, seed=args.seed, request_timeout_s=args.timeout, max_duration_s=args.max_duration,
    )


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import sys

    from fm9g_deploy.bench import workload
    from fm9g_deploy.bench.loadgen import run_load
    from fm9g_deploy.bench.metrics import compute_metrics
    from fm9g_deploy.bench.report import print_table, write_plot

    settings = settings_from(args)
    resize = None
    if args.prompts_file is not None:
        prompts = workload.load_prompts_file(args.prompts_file)
        if args.num_prompts:
            prompts = workload.take(prompts, args.num_prompts)
    else:
        count = args.num_prompts or 32
        prompts = workload.generated_prompts(count, args.input_len, args.seed)

        def resize(prompt_tokens: int) -> list[str]:
            # The first prompt has input_len words and came out prompt_tokens tokens long.
            words = max(1, round(args.input_len * args.input_len / prompt_tokens))
            return workload.generated_prompts(count, words, args.seed)

    def announce(ready: list[str]) -> None:
        print(f"bench: {len(ready)} requests to {settings.base_url} ({settings.model}), "
              f"{settings.output_len} output tokens each", file=sys.stderr, flush=True)

    load_run = asyncio.run(run_load(settings, prompts, resize, announce))
    report = {
        "url": settings.base_url,
        "model": settings.model,
        "workload": {
            "num_prompts": len(load_run.prompts),
            "input_len": None if args.prompts_file else args.input_len,
            "prompts_file": str(args.prompts_file) if args.prompts_file else None,
            "output_len": settings.output_len,
            "concurrency": settings.concurrency,
            "request_rate": settings.request_rate,
            "warmup": settings.warmup,
            "seed": settings.seed,
        },
        **compute_metrics(load_run.results, load_run.duration_s),
        "cut_short": load_run.cut_short,
    }
    if args.plot is not None:
        write_plot(load_run, report, args.plot)
        report["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        if args.plot is not None:
            print(f"plot written to {args.plot}")
    for message in sorted({r.error for r in load_run.results if not r.success})[:3]:
        print(f"bench: failed request: {message}", file=sys.stderr)
    return 1 if report["failed"] else 0
