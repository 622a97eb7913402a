"""The benchmark's figures, defined as `vllm bench serve` defines them (vllm/benchmarks/serve.py,
calculate_metrics; the request timing of lib/endpoint_request_func.py)."""

import numpy as np
import pytest

from fm9g_deploy.bench.loadgen import arrival_offsets
from fm9g_deploy.bench.metrics import RequestResult, compute_metrics, percentile, summarize_ms, time_per_output_token


@pytest.mark.parametrize("values", [
    [0.5], [3.0, 1.0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0.013, 0.2, 0.07, 0.4, 0.001, 0.9, 0.33],
])
@pytest.mark.parametrize("pct", [0, 1, 50, 90, 99, 100])
def test_percentile_is_numpys_linear_default(values, pct):
    assert percentile(values, pct) == pytest.approx(float(np.percentile(values, pct)))


def test_empty_series_summarize_to_zero_as_vllm_does():
    # vLLM: np.mean(x or 0), np.percentile(x or 0, p)
    assert summarize_ms([]) == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}


def _ok(start, ttft, itl, tokens, prompt_tokens=10):
    latency = ttft + sum(itl)  # the last chunk's time: TTFT plus every gap after it
    return RequestResult(success=True, start_time=start, ttft=ttft, itl=list(itl), latency=latency,
                         prompt_tokens=prompt_tokens, output_tokens=tokens)


def test_tpot_excludes_the_first_token():
    result = _ok(0.0, ttft=0.2, itl=[0.05, 0.05, 0.08], tokens=4)
    assert time_per_output_token(result) == pytest.approx((0.38 - 0.2) / 3)


def test_tpot_counts_server_tokens_not_chunks():
    # Two tokens arrived in one chunk: TPOT divides by the server's token count, ITL keeps the gap.
    result = _ok(0.0, ttft=0.1, itl=[0.2], tokens=3)
    assert time_per_output_token(result) == pytest.approx(0.2 / 2)


def test_single_token_requests_have_no_tpot():
    assert time_per_output_token(_ok(0.0, ttft=0.1, itl=[], tokens=1)) is None


def test_compute_metrics_matches_vllms_definitions():
    results = [
        _ok(0.0, 0.10, [0.02, 0.03, 0.04], tokens=4, prompt_tokens=12),
        _ok(0.5, 0.30, [0.05, 0.05, 0.05], tokens=4, prompt_tokens=8),
        _ok(1.0, 0.20, [], tokens=1, prompt_tokens=5),
        RequestResult(error_kind="HTTP 500", error="boom"),
        RequestResult(error_kind="timeout", error="slow"),
        RequestResult(error_kind="HTTP 500", error="boom again"),
    ]
    metrics = compute_metrics(results, duration_s=2.0)
    ok = results[:3]
    ttfts = [r.ttft for r in ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [gap for r in ok for gap in r.itl]
    assert metrics["completed"] == 3
    assert metrics["failed"] == 3
    assert metrics["errors"] == {"HTTP 500": 2, "timeout": 1}
    assert metrics["total_input_tokens"] == 25
    assert metrics["total_output_tokens"] == 9
    assert metrics["request_throughput"] == pytest.approx(3 / 2.0)
    assert metrics["output_throughput"] == pytest.approx(9 / 2.0)
    assert metrics["total_token_throughput"] == pytest.approx(34 / 2.0)
    for key, series in (("ttft_ms", ttfts), ("tpot_ms", tpots), ("itl_ms", itls), ("e2el_ms", [r.latency for r in ok])):
        assert metrics[key]["mean"] == pytest.approx(np.mean(series) * 1000)
        for pct in (50, 90, 99):
            assert metrics[key][f"p{pct}"] == pytest.approx(np.percentile(series, pct) * 1000)


def test_peak_output_throughput_buckets_token_times_per_second():
    # Token times: start + ttft, then each ITL gap; bucketed by whole seconds from the first start.
    results = [_ok(0.0, 0.5, [0.2, 0.2, 0.2], tokens=4), _ok(1.0, 0.1, [0.1], tokens=2)]
    # request 1 tokens at 0.5, 0.7, 0.9, 1.1; request 2 at 1.1, 1.2 -> second 0: 3, second 1: 3
    assert compute_metrics(results, 2.0)["max_output_tokens_per_s"] == 3


def test_no_successes_gives_zeros_not_errors():
    metrics = compute_metrics([RequestResult(error_kind="connection", error="refused")], duration_s=1.0)
    assert metrics["completed"] == 0 and metrics["failed"] == 1
    assert metrics["output_throughput"] == 0.0
    assert metrics["ttft_ms"]["p99"] == 0.0


def test_zero_duration_does_not_divide_by_zero():
    assert compute_metrics([], 0.0)["request_throughput"] == 0.0


def test_arrivals_without_a_rate_all_go_at_once():
    assert arrival_offsets(5, None, seed=0) == [0.0] * 5


def test_poisson_arrivals_span_count_over_rate_and_repeat_with_the_seed():
    offsets = arrival_offsets(50, 4.0, seed=7)
    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(50 / 4.0)  # rescaled like vLLM's get_request
    assert offsets == arrival_offsets(50, 4.0, seed=7)
    assert offsets != arrival_offsets(50, 4.0, seed=8)
