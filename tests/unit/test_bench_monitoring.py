"""The monitoring benchmark's pure parts (benchmarks/bench_monitoring.py): the order of its rounds,
the figures it draws from them, how it picks the front door and how it calls Ansible. The
measurement itself needs a deployed fleet."""

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("bench_monitoring", PROJECT_ROOT / "benchmarks/bench_monitoring.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclass looks its module up while the module runs
_spec.loader.exec_module(bench)


def test_rounds_come_in_off_on_pairs_every_other_one_reversed():
    assert bench.round_order(1) == ["off", "on"]
    assert bench.round_order(3) == ["off", "on", "on", "off", "off", "on"]


@pytest.mark.parametrize("pairs", [1, 2, 3, 4, 7])
def test_each_side_gets_as_many_rounds(pairs):
    order = bench.round_order(pairs)
    assert order.count("off") == order.count("on") == pairs


@pytest.mark.parametrize("pairs", [2, 4, 6])
def test_a_steady_drift_weighs_on_both_sides_alike(pairs):
    # Throughput falling by one unit per round: with whole ABBA blocks both sides lose the same.
    order = bench.round_order(pairs)
    loss = {side: sum(index for index, one in enumerate(order) if one == side) for side in ("off", "on")}
    assert loss["off"] == loss["on"]


def _rounds(off: list[float], on: list[float], failed: int = 0) -> list[dict]:
    rounds = [{"monitoring": "off", "output_throughput": value, "failed": 0} for value in off]
    rounds += [{"monitoring": "on", "output_throughput": value, "failed": 0} for value in on]
    rounds[0]["failed"] = failed
    return rounds


def test_the_summary_compares_the_medians():
    summary = bench.summarize(_rounds([100.0, 101.0, 60.0], [99.0, 99.5, 100.0]))
    assert summary["off"]["median"] == 100.0  # the disturbed 60 does not move it
    assert summary["on"]["median"] == 99.5
    assert summary["ratio"] == pytest.approx(0.995)
    assert summary["overhead_percent"] == pytest.approx(0.5)
    assert summary["within_goal"] is True
    assert summary["off"]["spread_percent"] == pytest.approx(41.0)
    assert summary["noisy"] is True


def test_an_overhead_of_one_percent_or_more_misses_the_goal():
    summary = bench.summarize(_rounds([100.0, 100.0], [99.0, 99.0]))
    assert summary["overhead_percent"] == pytest.approx(1.0)
    assert summary["within_goal"] is False
    assert summary["noisy"] is False


def test_scraping_that_looks_faster_is_a_negative_overhead():
    summary = bench.summarize(_rounds([100.0], [102.0], failed=2))
    assert summary["overhead_percent"] == pytest.approx(-2.0)
    assert summary["within_goal"] is True
    assert summary["failed_requests"] == 2


def test_a_summary_needs_both_sides_and_served_tokens():
    with pytest.raises(ValueError):
        bench.summarize(_rounds([100.0], []))
    with pytest.raises(ValueError):
        bench.summarize(_rounds([0.0], [0.0]))


def test_the_front_door_is_the_first_gateway_host_else_the_first_serving_host():
    assert bench.first_host({"gateway": ["gw1"], "serving": ["host1", "host2"]}) == "gw1"
    assert bench.first_host({"gateway": [], "serving": ["host1", "host2"]}) == "host1"
    assert bench.first_host({"serving": ["host2"]}) == "host2"
    with pytest.raises(bench.UserError):
        bench.first_host({})


def test_host_commands_are_an_argv_with_the_module_arguments_as_one_element():
    argv = bench.adhoc_argv("/venv/bin/ansible", "gw1", Path("/tmp/hosts.yml"), "ansible.builtin.systemd",
                            "name=prometheus state=stopped")
    assert argv == ["/venv/bin/ansible", "gw1", "-i", "/tmp/hosts.yml", "-m", "ansible.builtin.systemd",
                    "-a", "name=prometheus state=stopped"]


def test_the_load_is_bounded():
    args = bench.parse_args(["-i", "hosts.yml"])
    assert (args.rounds, args.requests, args.concurrency, args.max_tokens) == (3, 48, 4, 32)
    assert args.request_timeout > 0 and args.round_timeout > 0
    for bad in (["--rounds", "0"], ["--requests", "100000"], ["--requests", "1000", "--max-tokens", "4096"],
                ["--request-timeout", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(["-i", "hosts.yml", *bad])


def test_a_failed_host_command_is_told_by_its_module_message():
    output = 'gw1 | FAILED! => {\n    "changed": false,\n    "msg": "Could not find the requested service prometheus: host"\n}'
    assert bench.ansible_message(output) == "Could not find the requested service prometheus: host"
    assert bench.ansible_message("gw1 | UNREACHABLE!") == "gw1 | UNREACHABLE!"


def test_rounds_noisier_than_the_goal_leave_the_overhead_unresolved():
    assert bench.summarize(_rounds([100.0, 101.0, 60.0], [99.0, 99.5, 100.0]))["resolved"] is False
    assert bench.summarize(_rounds([100.0, 100.0], [99.0, 99.0]))["resolved"] is True


def test_the_cpu_share_counts_the_rounds_with_monitoring_on_only():
    rounds = [{"monitoring": "on", "cpu": {"seconds": 20.0, "monitoring": 0.4, "busy": 36.0}},
              {"monitoring": "off", "cpu": {"seconds": 20.0, "monitoring": 9.0, "busy": 36.0}},
              {"monitoring": "on", "cpu": {"seconds": 30.0, "monitoring": 0.6, "busy": 54.0}}]
    share = bench.cpu_share(rounds)
    assert share["rounds"] == 2
    assert share["monitoring_cores"] == pytest.approx(1.0 / 50)
    assert share["busy_cores"] == pytest.approx(90.0 / 50)
    assert share["share_percent"] == pytest.approx(1.0 / 90 * 100)
    assert bench.cpu_share([{"monitoring": "off", "cpu": None}]) is None


def test_the_cpu_queries_cover_the_rounds_window_and_every_monitoring_process():
    queries = bench.cpu_queries(1796341839.5, 21.4)
    assert queries["monitoring"] == ('sum(increase(process_cpu_seconds_total{job=~"prometheus|fm9g-node|fm9g-nginx|'
                                     'fm9g-gateway-log"}[21s] @ 1796341839.500))')
    assert queries["busy_by_host"] == 'sum by (host) (increase(node_cpu_seconds_total{mode!="idle"}[21s] @ 1796341839.500))'
