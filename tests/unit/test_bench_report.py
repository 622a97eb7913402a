"""The benchmark report as a table and as a PNG."""

import pytest

from fm9g_deploy.bench.loadgen import LoadRun
from fm9g_deploy.bench.metrics import RequestResult, compute_metrics
from fm9g_deploy.bench.report import print_table, write_plot


def _run():
    results = [RequestResult(success=True, start_time=100.0 + i * 0.1, ttft=0.05, itl=[0.01] * 7, latency=0.12,
                             prompt_tokens=32, output_tokens=8) for i in range(6)]
    results.append(RequestResult(start_time=100.3, error_kind="HTTP 500", error="boom"))
    return LoadRun(prompts=["p"] * 7, results=results, duration_s=0.8, started_at=100.0)


def _report(run):
    return {"url": "http://127.0.0.1:8020", "model": "9g",
            "workload": {"num_prompts": 7, "concurrency": 2, "request_rate": None},
            **compute_metrics(run.results, run.duration_s), "cut_short": False}


def test_table_shows_vllms_figures(capsys):
    print_table(_report(_run()))
    out = capsys.readouterr().out
    for label in ("Successful requests", "Failed requests", "1 (HTTP 500: 1)", "Output token throughput",
                  "Peak output token throughput", "TTFT", "TPOT", "ITL", "E2E latency", "p99"):
        assert label in out


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run()
    path = tmp_path / "bench.png"
    write_plot(run, _report(run), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
