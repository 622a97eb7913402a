"""Show a benchmark's numbers: a table, JSON, or a PNG plot (matplotlib, imported only for --plot)."""

from __future__ import annotations

from pathlib import Path

from fm9g_deploy.bench.loadgen import LoadRun

_SERIES = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2el_ms"))


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=110, highlight=False)
    workload = report["workload"]
    load = (f"concurrency {workload['concurrency']}" if workload["concurrency"]
            else f"request rate {workload['request_rate']:g}/s" if workload["request_rate"] else "all at once")
    summary = Table(title=f"{report['model']} at {report['url']}",
                    caption=f"{workload['num_prompts']} prompts, {load}", show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    rows = [
        ("Successful requests", f"{report['completed']}"),
        ("Failed requests", f"{report['failed']}" + (f" ({_errors(report['errors'])})" if report["errors"] else "")),
        ("Benchmark duration (s)", f"{report['duration_s']:.2f}"),
        ("Total input tokens", f"{report['total_input_tokens']}"),
        ("Total output tokens", f"{report['total_output_tokens']}"),
        ("Request throughput (req/s)", f"{report['request_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{report['output_throughput']:.2f}"),
        ("Peak output token throughput (tok/s)", f"{report['max_output_tokens_per_s']:.2f}"),
        ("Total token throughput (tok/s)", f"{report['total_token_throughput']:.2f}"),
    ]
    for label, value in rows:
        summary.add_row(label, value)
    console.print(summary)
    latency = Table(title="Latency (ms)")
    latency.add_column("metric", style="bold")
    for column in ("mean", "p50", "p90", "p99"):
        latency.add_column(column, justify="right")
    for label, key in _SERIES:
        values = report[key]
        latency.add_row(label, *(f"{values[c]:.2f}" for c in ("mean", "p50", "p90", "p99")))
    console.print(latency)
    if report.get("cut_short"):
        console.print("[yellow]the run hit --max-duration; unfinished requests count as failed[/]")


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(errors.items()))


def write_plot(run: LoadRun, report: dict, path: Path) -> None:
    """Latency over the run (TTFT and E2E latency, TPOT, per request by its start), the ITL
    histogram and output tokens per second over the run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from fm9g_deploy.bench.metrics import time_per_output_token, token_times

    done = [r for r in run.results if r.success]
    failed = [r for r in run.results if not r.success and r.start_time >= run.started_at]
    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    latency, tpot, itl, timeline = axes.flat

    starts = [r.start_time - run.started_at for r in done]
    latency.scatter(starts, [r.latency * 1000 for r in done], s=12, color="#4477aa", label="E2E latency")
    latency.scatter(starts, [r.ttft * 1000 for r in done], s=12, color="#ee6677", label="TTFT")
    if failed:
        latency.scatter([r.start_time - run.started_at for r in failed], [0] * len(failed), marker="x",
                        color="black", label=f"failed ({len(failed)})")
    latency.set_xlabel("request start (s into the run)")
    latency.set_ylabel("ms")
    latency.set_title("latency over time")
    latency.legend(loc="upper left", fontsize="small")

    with_tpot = [(r.start_time - run.started_at, time_per_output_token(r)) for r in done]
    with_tpot = [(start, value * 1000) for start, value in with_tpot if value is not None]
    tpot.scatter([x for x, _ in with_tpot], [y for _, y in with_tpot], s=12, color="#228833")
    tpot.set_xlabel("request start (s into the run)")
    tpot.set_ylabel("ms")
    tpot.set_title("TPOT over time")

    itl.hist([gap * 1000 for r in done for gap in r.itl] or [0], bins=40, color="#4477aa")
    itl.set_xlabel("ITL (ms)")
    itl.set_ylabel("count")
    itl.set_title("inter-token latency")

    # Buckets of one second, finer for short runs so the shape still shows.
    width = 1.0 if run.duration_s > 30 else max(run.duration_s / 30, 0.01)
    buckets = [0] * (int(run.duration_s / width) + 1)
    for r in done:
        for moment in token_times(r):
            bucket = int((moment - run.started_at) / width)
            if 0 <= bucket < len(buckets):
                buckets[bucket] += 1
    # The last bucket ends with the run: divide by the part of it the run covered.
    spans = [min(width, run.duration_s - i * width) for i in range(len(buckets))]
    rates = [n / span if span > 0 else 0.0 for n, span in zip(buckets, spans)]
    timeline.bar([i * width for i in range(len(buckets))], rates, width=spans, align="edge", color="#228833")
    timeline.set_xlabel("s into the run")
    timeline.set_ylabel("output tokens/s")
    timeline.set_title("output throughput over time")

    figure.suptitle(f"{report['model']} at {report['url']}: {report['output_throughput']:.1f} output tok/s, "
                    f"{report['completed']} ok, {report['failed']} failed")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
