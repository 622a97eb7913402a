"""Serving metrics from per-request timings, defined as vLLM's `vllm bench serve` defines them.

For each successful streamed request (vllm/benchmarks/serve.py, calculate_metrics):
- TTFT: time from sending the request to the first chunk that carries a choice;
- ITL: the gaps between successive choice chunks (one value per gap, pooled over requests);
- TPOT: (latency - TTFT) / (output tokens - 1), only for requests with more than one token
  (the first token is excluded);
- E2EL (latency): time from sending the request to the last choice chunk.
Throughputs divide totals over successful requests by the benchmark's wall-clock duration.
Peak output throughput: the most tokens in one whole second, token times being the start plus
TTFT plus the ITL gaps, seconds counted from the first successful request's start.
Percentiles interpolate linearly between closest ranks (numpy's default); empty series give 0.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

#: The summary statistics reported for every latency series.
PERCENTILES = (50.0, 90.0, 99.0)


@dataclass
class RequestResult:
    """What one request did; times in seconds (time.perf_counter clock)."""

    success: bool = False
    start_time: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    #: A short class of the error for counting ("HTTP 500", "timeout", "connection", ...).
    error_kind: str = ""


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile with linear interpolation (numpy.percentile's default)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(values_s: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99 of a series in seconds, as milliseconds."""
    mean = sum(values_s) / len(values_s) if values_s else 0.0
    summary = {"mean": mean * 1000.0}
    for pct in PERCENTILES:
        summary[f"p{pct:g}"] = percentile(values_s, pct) * 1000.0
    return summary


def time_per_output_token(result: RequestResult) -> float | None:
    """TPOT of one request, or None when it produced at most one token (vLLM leaves those out)."""
    if result.output_tokens <= 1:
        return None
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def token_times(result: RequestResult) -> list[float]:
    """When each streamed chunk of a request arrived (its start time plus TTFT plus the gaps)."""
    moment = result.start_time + result.ttft
    times = [moment]
    for gap in result.itl:
        moment += gap
        times.append(moment)
    return times


def peak_output_throughput(done: list[RequestResult]) -> float:
    """Most tokens seen in one one-second bucket (vLLM's max_output_tokens_per_s)."""
    if not done:
        return 0.0
    first = min(r.start_time for r in done)
    buckets = Counter(int(moment - first) for r in done for moment in token_times(r))
    return float(max(buckets.values()))


def compute_metrics(results: list[RequestResult], duration_s: float) -> dict:
    """The report's numbers: counts, throughputs and latency summaries (ms)."""
    done = [r for r in results if r.success]
    failed = [r for r in results if not r.success]
    total_input = sum(r.prompt_tokens for r in done)
    total_output = sum(r.output_tokens for r in done)
    tpots = [t for t in (time_per_output_token(r) for r in done) if t is not None]
    itls = [gap for r in done for gap in r.itl]
    per_second = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    return {
        "duration_s": duration_s,
        "completed": len(done),
        "failed": len(failed),
        "errors": dict(Counter(r.error_kind or "error" for r in failed)),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_second(len(done)),
        "output_throughput": per_second(total_output),
        "total_token_throughput": per_second(total_input + total_output),
        "max_output_tokens_per_s": peak_output_throughput(done),
        "ttft_ms": summarize_ms([r.ttft for r in done]),
        "tpot_ms": summarize_ms(tpots),
        "itl_ms": summarize_ms(itls),
        "e2el_ms": summarize_ms([r.latency for r in done]),
    }
