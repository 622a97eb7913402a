"""`status` from the live fleet: vLLM's /metrics read on the host (module_utils/fm9g_replicas.py,
library/fm9g_replica_status.py), drift against what `deploy` would do (fm9g_deploy/fleet_status.py),
the table, and --watch's arguments."""

from __future__ import annotations

import argparse
import http.server
import importlib.util
import json
import shutil
import threading
from types import SimpleNamespace

import pytest

from fm9g_deploy import fleet_status
from fm9g_deploy.cli import main as cli_main
from fm9g_deploy.commands import status as status_command
from fm9g_deploy.errors import UserError
from fm9g_deploy.fleet_status import DesiredState, config_hash, release_of, table_notes, table_rows, with_drift
from tests.conftest import PROJECT_ROOT
from tests.unit.ansible_module import run_library_module


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


replicas = _load("fm9g_replicas", PROJECT_ROOT / "module_utils" / "fm9g_replicas.py")


def vllm_metrics(running=0, waiting=0, usage=0.0, generated=0.0, prompted=0.0):
    """Prometheus text shaped as vLLM's /metrics (two engines, so every metric has two series)."""
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="9g"}} {running}\n'
        f'vllm:num_requests_running{{engine="1",model_name="9g"}} 0.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="9g"}} {waiting}\n'
        f'vllm:num_requests_waiting{{engine="1",model_name="9g"}} 1.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="9g"}} {usage}\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="9g"} 0.01\n'
        "# TYPE vllm:generation_tokens counter\n"
        f'vllm:generation_tokens_total{{engine="0",model_name="9g"}} {generated}\n'
        'vllm:generation_tokens_total{engine="1",model_name="9g"} 100.0\n'
        'vllm:generation_tokens_created{engine="0",model_name="9g"} 1.7e+09\n'
        f'vllm:prompt_tokens_total{{engine="0",model_name="9g"}} {prompted}\n'
    )


# -- the Prometheus text parser ---------------------------------------------------------------------

def test_the_parser_reads_labels_whose_values_hold_commas_quotes_and_braces():
    samples = replicas.parse_prometheus_text(
        '# HELP m a metric, with "quotes"\n'
        'm{a="x,y",b="say \\"hi\\"",c="{}",d="back\\\\slash",e="new\\nline"} 2\n'
        "plain 3.5\n"
        "  \n"
        'with_time{a="1"} 4 1700000000000\n'
    )
    labels, value = samples["m"][0]
    assert labels == {"a": "x,y", "b": 'say "hi"', "c": "{}", "d": "back\\slash", "e": "new\nline"} and value == 2
    assert samples["plain"] == [({}, 3.5)]
    assert samples["with_time"] == [({"a": "1"}, 4.0)]


def test_the_parser_reads_nan_infinities_and_exponents_and_skips_what_does_not_parse():
    samples = replicas.parse_prometheus_text(
        "a NaN\nb +Inf\nc -Inf\nd 1.5e+03\ne 2E-2\nf not-a-number\n{broken} 1\ng{a=\"unclosed} 1\n")
    assert samples["a"][0][1] != samples["a"][0][1]  # NaN
    assert samples["b"][0][1] == float("inf") and samples["c"][0][1] == float("-inf")
    assert samples["d"][0][1] == 1500.0 and samples["e"][0][1] == 0.02
    assert set(samples) == {"a", "b", "c", "d", "e"}


def test_sums_and_maxima_skip_series_that_are_not_numbers_and_missing_metrics_are_none():
    samples = replicas.parse_prometheus_text('x{e="0"} 2\nx{e="1"} NaN\nx{e="2"} 3\ny{e="0"} NaN\n')
    assert replicas.metric_sum(samples, "x") == 5 and replicas.metric_max(samples, "x") == 3
    assert replicas.metric_sum(samples, "y") is None and replicas.metric_sum(samples, "missing") is None


def test_one_read_reports_the_gauges_and_no_rates():
    report = replicas.serving_metrics(replicas.parse_prometheus_text(vllm_metrics(running=3, waiting=2, usage=0.25)))
    assert report == {"requests_running": 3, "requests_waiting": 3, "kv_cache_usage": 0.25}


def test_missing_metrics_are_reported_as_none():
    report = replicas.serving_metrics({}, {}, 1.0)
    assert report == {"requests_running": None, "requests_waiting": None, "kv_cache_usage": None,
                      "generation_tokens_per_s": None, "prompt_tokens_per_s": None}


def test_older_vllm_names_the_kv_cache_after_the_gpu():
    samples = replicas.parse_prometheus_text('vllm:gpu_cache_usage_perc{model_name="9g"} 0.5\n')
    assert replicas.serving_metrics(samples)["kv_cache_usage"] == 0.5


# -- rates ------------------------------------------------------------------------------------------

def test_a_counter_rate_is_its_growth_over_the_elapsed_time_summed_over_series():
    before = replicas.parse_prometheus_text(vllm_metrics(generated=1000, prompted=50))
    after = replicas.parse_prometheus_text(vllm_metrics(generated=1250, prompted=150))
    report = replicas.serving_metrics(before, after, 2.0)
    assert report["generation_tokens_per_s"] == 125.0 and report["prompt_tokens_per_s"] == 50.0


def test_a_counter_that_went_down_means_a_restart_and_no_rate():
    before = replicas.parse_prometheus_text(vllm_metrics(generated=1000))
    after = replicas.parse_prometheus_text(vllm_metrics(generated=10))
    assert replicas.counter_rate(before, after, "vllm:generation_tokens_total", 1.0) is None
    # One engine's counter began again while the other grew more: the sum hides it, the series do not.
    before = replicas.parse_prometheus_text('t{e="0"} 100\nt{e="1"} 0\n')
    after = replicas.parse_prometheus_text('t{e="0"} 5\nt{e="1"} 500\n')
    assert replicas.counter_rate(before, after, "t", 1.0) is None


def test_no_rate_without_elapsed_time_or_without_the_counter():
    samples = replicas.parse_prometheus_text("t 1\n")
    assert replicas.counter_rate(samples, samples, "t", 0) is None
    assert replicas.counter_rate(samples, {}, "t", 1.0) is None
    assert replicas.counter_rate(samples, samples, "t", 1.0) == 0.0


# -- /metrics read from a running server ------------------------------------------------------------

class _MetricsDouble(http.server.BaseHTTPRequestHandler):
    """Test double of vLLM's /metrics endpoint: each GET answers the next of the server's texts
    (the last one again once they run out); anything else is 404, as /v1/models without vLLM."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path != "/metrics":
            self.send_error(404)
            return
        texts = self.server.texts
        body = (texts.pop(0) if len(texts) > 1 else texts[0]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_server():
    servers = []

    def start(*texts):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MetricsDouble)
        server.texts = list(texts)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port():
    server = http.server.HTTPServer(("127.0.0.1", 0), _MetricsDouble)
    port = server.server_address[1]
    server.server_close()
    return port


def test_every_replica_is_read_twice_with_one_pause_for_the_host(metrics_server):
    busy = metrics_server(vllm_metrics(generated=0, prompted=0), vllm_metrics(running=2, usage=0.5, generated=300,
                                                                              prompted=30))
    idle = metrics_server(vllm_metrics(generated=7), vllm_metrics(generated=7))
    restarted = metrics_server(vllm_metrics(generated=5000), vllm_metrics(generated=3))
    down = _closed_port()
    pauses, now = [], [0.0]

    def sleep(seconds):
        pauses.append(seconds)
        now[0] += seconds

    reports = replicas.replica_metrics({0: busy, 1: idle, 2: restarted, 3: down}, 1.5, 5.0,
                                       sleep=sleep, clock=lambda: now[0])
    assert pauses == [1.5]
    assert reports[0] == {"metrics": {"requests_running": 2, "requests_waiting": 1, "kv_cache_usage": 0.5,
                                      "generation_tokens_per_s": 200.0, "prompt_tokens_per_s": 20.0},
                          "metrics_problem": None}
    assert reports[1]["metrics"]["generation_tokens_per_s"] == 0.0
    assert reports[2]["metrics"]["generation_tokens_per_s"] is None and reports[2]["metrics"]["requests_running"] == 0
    assert reports[3]["metrics"] == {} and reports[3]["metrics_problem"].startswith("/metrics: ")
    assert "\n" not in reports[3]["metrics_problem"]


def test_interval_zero_reads_once_and_reports_no_rates(metrics_server):
    port = metrics_server(vllm_metrics(running=1), vllm_metrics(running=9))
    reports = replicas.replica_metrics({0: port}, 0, 5.0, sleep=pytest.fail)
    assert reports[0]["metrics"] == {"requests_running": 1, "requests_waiting": 1, "kv_cache_usage": 0.01}


def test_no_pause_when_no_replica_answers():
    reports = replicas.replica_metrics({0: _closed_port()}, 30, 1.0, sleep=pytest.fail)
    assert reports[0]["metrics"] == {}


def _run_status_module(args, monkeypatch, capsys):
    """library/fm9g_replica_status.py's main(), in-process, with module_utils as Ansible ships it."""
    return run_library_module("fm9g_replica_status", args, monkeypatch, capsys,
                              module_utils={"fm9g_replicas": replicas})[1]


def test_the_module_reports_each_replicas_metrics_and_deployed_spec(tmp_path, metrics_server, monkeypatch, capsys):
    port = metrics_server(vllm_metrics(generated=10), vllm_metrics(running=1, generated=20))
    spec = {"index": 0, "port": port, "serve_mode": "container", "container": "fm9g-replica-0", "unit": "",
            "tensor_parallel_size": 1, "gpus": [], "max_model_len": 256, "state_file": str(tmp_path / "state.json")}
    (tmp_path / "replica-0.json").write_text(json.dumps(spec))
    # container_cli `false`: no container by that name, so no Docker is needed.
    result = _run_status_module({"config_dir": str(tmp_path), "api_key_file": str(tmp_path / "no-key"),
                                 "engine_probe_cache": {}, "container_cli": shutil.which("false"),
                                 "metrics_interval": 0.05}, monkeypatch, capsys)
    replica = result["replicas"][0]
    assert not result.get("failed") and replica["spec"] == spec
    assert replica["ready"] is False and replica["problem"] == "HTTP 404" and replica["sub_state"] == "absent"
    assert replica["metrics"]["requests_running"] == 1 and replica["metrics_problem"] is None
    assert 0 < replica["metrics"]["generation_tokens_per_s"] <= 10 / 0.05


@pytest.mark.parametrize("state", ["serving", "waiting"])
def test_a_headless_node_is_ready_when_its_head_serves_with_it(tmp_path, monkeypatch, capsys, state):
    """A headless node of a replica over hosts has no API: no request, no metrics; its supervisor's state says."""
    node = {"rank": 1, "hosts": ["host1", "host2"], "head": "host1"}
    spec = {"index": 0, "port": _closed_port(), "serve_mode": "container", "container": "fm9g-replica-0", "unit": "",
            "tensor_parallel_size": 2, "gpus": [], "max_model_len": 256, "state_file": str(tmp_path / "state.json"),
            "node": node}
    (tmp_path / "replica-0.json").write_text(json.dumps(spec))
    (tmp_path / "state.json").write_text(json.dumps({"state": state, "restarts": 1, "last_cause": "the head restarted"}))
    result = _run_status_module({"config_dir": str(tmp_path), "api_key_file": str(tmp_path / "no-key"),
                                 "engine_probe_cache": {}, "container_cli": shutil.which("false"),
                                 "metrics_interval": 30}, monkeypatch, capsys)
    [replica] = result["replicas"]
    assert replica["node"] == {"rank": 1, "hosts": ["host1", "host2"]} and replica["models"] == []
    assert replica["ready"] is (state == "serving") and replica["engine_state"] == state
    assert replica["problem"] == (None if state == "serving" else "node rank 1 of the replica headed by host1: waiting")
    assert replica["metrics"] == {} and "headless" in replica["metrics_problem"]
    row = table_rows({"host2": {"replicas": [dict(replica, release="", config_hash=None, drift=[])]}})[0]
    assert row[1] == "0 node 1"


def test_the_module_refuses_a_negative_interval(tmp_path, monkeypatch, capsys):
    result = _run_status_module({"config_dir": str(tmp_path), "api_key_file": str(tmp_path / "no-key"),
                                 "engine_probe_cache": {}, "metrics_interval": -1}, monkeypatch, capsys)
    assert result["failed"] and "metrics_interval" in result["msg"]


# -- drift ------------------------------------------------------------------------------------------

RELEASE = "a" * 64
OTHER_RELEASE = "b" * 64


def _spec(index, **changes):
    return {"index": index, "port": 8100 + index, "argv": ["python", "-m", "vllm"], "environment": {"X": "1"},
            "gpus": [index], "gpu_memory_utilization": 0.9, **changes}


def _replica(index, spec, ready=True, **more):
    return {"index": index, "active_state": "active", "sub_state": "running", "ready": ready, "restarts": 0,
            "uptime_s": 3725, "last_cause": None, "problem": None, "spec": spec, "metrics": {}, **more}


def _report(*replica_reports, release=RELEASE):
    return {"replicas": list(replica_reports), "model_dir": f"/opt/fm9g/models/9g/releases/{release}/model",
            "env_lock": "x"}


def test_the_config_hash_is_the_sorted_compact_json_of_the_spec():
    spec = _spec(0)
    assert config_hash(spec) == config_hash(dict(reversed(list(spec.items()))))
    import hashlib
    assert config_hash(spec) == hashlib.sha256(
        json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert config_hash(_spec(0, port=9)) != config_hash(spec)


def test_the_release_is_read_from_the_model_dir():
    assert release_of(f"/opt/fm9g/models/9g/releases/{RELEASE}/model") == RELEASE
    assert release_of(f"/opt/fm9g/models/9g/releases/{RELEASE}") == RELEASE
    assert release_of("") == "" and release_of("/opt/fm9g/models/9g/current") == ""


def test_a_fleet_as_planned_has_no_drift():
    desired = DesiredState(specs={"h1": [_spec(0), _spec(1)]}, release=RELEASE)
    report = with_drift({"h1": _report(_replica(0, _spec(0)), _replica(1, _spec(1)))}, desired)["h1"]
    assert report["drift"] == [] and report["release"] == report["desired_release"] == RELEASE
    assert [r["drift"] for r in report["replicas"]] == [[], []]
    assert report["replicas"][0]["config_hash"] == report["replicas"][0]["desired_config_hash"] == config_hash(_spec(0))
    assert "desired_problem" not in report


def test_a_differing_spec_names_both_hashes_and_what_differs():
    desired = DesiredState(specs={"h1": [_spec(0)]}, release=RELEASE)
    deployed = _spec(0, argv=["python", "old"], environment={"X": "2"})
    replica = with_drift({"h1": _report(_replica(0, deployed))}, desired)["h1"]["replicas"][0]
    assert replica["drift"] == [f"config differs from the desired spec ({config_hash(deployed)} → "
                                f"{config_hash(_spec(0))}: argv, environment)"]


def test_missing_and_extra_replicas_and_a_differing_release_are_drift():
    desired = DesiredState(specs={"h1": [_spec(0), _spec(1)]}, release=RELEASE)
    report = with_drift({"h1": _report(_replica(0, _spec(0)), _replica(2, _spec(2)), release=OTHER_RELEASE)},
                        desired)["h1"]
    assert report["drift"] == [f"release {'b' * 12} differs from the desired {'a' * 12}",
                               "planned replica 1 not deployed"]
    assert report["replicas"][1]["drift"] == ["not in the plan"] and report["replicas"][1]["desired_config_hash"] is None
    notes = table_notes({"h1": report})
    assert "h1: planned replica 1 not deployed" in notes and "h1 replica 2: not in the plan" in notes


def test_a_host_outside_the_plan_and_one_without_a_release():
    desired = DesiredState(specs={}, release=RELEASE)
    report = with_drift({"h9": {"replicas": [_replica(0, _spec(0))], "model_dir": ""}}, desired)["h9"]
    assert report["drift"] == ["host not in the plan", f"no model release installed (desired {'a' * 12})"]


def test_an_unreadable_host_has_unknown_drift():
    desired = DesiredState(specs={"h1": [_spec(0)]}, release=RELEASE)
    report = with_drift({"h1": {"replicas": [], "problem": "h1: unreachable"}}, desired)["h1"]
    assert report["drift"] is None


def test_an_unknown_desired_state_leaves_drift_unknown_and_says_why():
    report = with_drift({"h1": _report(_replica(0, _spec(0)))}, DesiredState(problem="no artifact cache"))["h1"]
    assert report["desired_problem"] == "no artifact cache" and report["drift"] is None
    assert report["desired_release"] is None and report["release"] == RELEASE
    replica = report["replicas"][0]
    assert replica["drift"] is None and replica["desired_config_hash"] is None
    assert replica["config_hash"] == config_hash(_spec(0))
    assert table_rows({"h1": report})[0][11] == f"{config_hash(_spec(0))} ?"
    assert any("no artifact cache" in note for note in table_notes({"h1": report}))


def test_the_desired_state_is_planned_as_deploy_plans_it(monkeypatch, tmp_path):
    from fm9g_deploy import facts, hostvars
    from fm9g_deploy.config import parse_config
    from fm9g_deploy.hostvars import serve_vars
    from fm9g_deploy.planner import plan_deployment
    from fm9g_deploy.profiles import load_profile
    from tests.unit.test_planner import NO_GPU

    config = parse_config("model: {name: tiny-random}\nprofile: cpu\nmirror: {url: 'http://127.0.0.1:9'}\n")
    stack = SimpleNamespace(profile=load_profile("cpu"), model_pin=lambda: {"sha256": RELEASE})
    monkeypatch.setattr(hostvars, "load_stack", lambda _config: stack)
    monkeypatch.setattr(facts, "read_hosts", lambda inventory, limit=None, serve_mode="systemd":
                        facts.HostFacts(gpus={"host1": NO_GPU}))
    desired = fleet_status.desired_state(config, tmp_path / "inventory.yml")
    assert desired.problem is None and desired.release == RELEASE
    # What deploy hands the role, which writes it to the host as replica-N.json.
    monkeypatch.setattr(hostvars.Stack, "revision", lambda self: "r")
    monkeypatch.setattr(hostvars.Stack, "image_tag", lambda self: "i")
    real = hostvars.Stack(config, load_profile("cpu"), None, "s", None, "http://127.0.0.1:9")
    plan = json.loads(json.dumps(serve_vars(real, plan_deployment(config, {"host1": NO_GPU}), "k")["fm9g_plan"]))
    assert desired.specs == plan
    assert with_drift({"host1": _report(_replica(0, plan["host1"][0]))}, desired)["host1"]["replicas"][0]["drift"] == []


def test_a_desired_state_that_cannot_be_planned_is_a_problem_not_an_error(monkeypatch, tmp_path):
    from fm9g_deploy import facts, hostvars
    from fm9g_deploy.config import parse_config
    from fm9g_deploy.errors import OperationFailed

    config = parse_config("model: {name: tiny-random}\nprofile: cpu\n")

    def no_cache(_config):
        raise UserError("the tiny-random tarball is not in the artifact cache /x;\nrun `fm9g-deploy artifacts fetch`")

    monkeypatch.setattr(hostvars, "load_stack", no_cache)
    desired = fleet_status.desired_state(config, tmp_path / "inventory.yml")
    assert desired.problem.startswith("the tiny-random tarball") and "\n" not in desired.problem

    def unreachable(inventory, limit=None, serve_mode="systemd"):
        raise OperationFailed("reading GPU facts failed: host1: unreachable")

    monkeypatch.setattr(hostvars, "load_stack", lambda _config: SimpleNamespace(profile=None))
    monkeypatch.setattr(facts, "read_hosts", unreachable)
    assert fleet_status.desired_state(config, tmp_path / "inventory.yml").problem.startswith("reading GPU facts")


# -- the table --------------------------------------------------------------------------------------

def test_the_table_rows_show_state_load_release_and_config():
    desired = DesiredState(specs={"h1": [_spec(0), _spec(1)], "h2": [_spec(0)]}, release=RELEASE)
    metrics = {"requests_running": 3, "requests_waiting": 0, "kv_cache_usage": 0.125,
               "generation_tokens_per_s": 41.25, "prompt_tokens_per_s": 9.0}
    reports = with_drift({
        "h1": _report(_replica(0, _spec(0), metrics=metrics),
                      _replica(1, _spec(1, port=1), ready=False, problem="HTTP 503", last_cause="killed by SIGKILL",
                               metrics_problem="/metrics: Connection refused")),
        "h2": {"replicas": [], "problem": "h2: Read each replica's state: unreachable"},
    }, desired)
    rows = table_rows(reports)
    assert all(len(row) == len(fleet_status.COLUMNS) for row in rows)
    assert rows[0] == ("h1", "0", "active/running", "yes", "1h02m", "0", "3", "0", "12.5", "41.2", "a" * 12,
                       f"{config_hash(_spec(0))} ok", "-")
    assert rows[1][3] == "no (HTTP 503)" and rows[1][6:10] == ("-", "-", "-", "-")
    assert rows[1][11] == f"{config_hash(_spec(1, port=1))} DRIFT" and rows[1][12] == "killed by SIGKILL"
    assert rows[2][:4] == ("h2", "-", "h2: Read each replica's state: unreachable", "no")
    # Only a ready replica's unread metrics need a word: a replica that is down says so already.
    assert not any("no serving metrics" in note for note in table_notes(reports))


def test_a_release_other_than_the_desired_is_marked():
    reports = with_drift({"h1": _report(_replica(0, _spec(0)), release=OTHER_RELEASE)},
                         DesiredState(specs={"h1": [_spec(0)]}, release=RELEASE))
    assert table_rows(reports)[0][10] == "b" * 12 + fleet_status.RELEASE_DIFFERS


def test_uptime_reads_as_a_person_would_say_it():
    assert [fleet_status.format_uptime(s) for s in (None, 5, 65, 3725, 90000)] == ["-", "5s", "1m05s", "1h02m", "1d01h"]


def test_the_dtype_notes_stay_under_the_table():
    replica = _replica(0, _spec(0), dtype="float32", dtype_note="bf16 faulted")
    notes = table_notes(with_drift({"h1": _report(replica)}, DesiredState(specs={"h1": [_spec(0)]}, release=RELEASE)))
    assert notes == ["h1 replica 0 runs in float32: bf16 faulted"]


# -- the command ------------------------------------------------------------------------------------

@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text("all: {}\n")
    return path


@pytest.mark.parametrize("arguments, message", [
    (["--watch", "0"], "--watch 0: give 1 or more seconds"),
    (["--watch", "0.5"], "--watch 0.5: give 1 or more seconds"),
    (["--watch", "--json"], "--watch draws a live table, --json prints one report"),
    (["--json", "--watch", "2"], "--watch draws a live table, --json prints one report"),
    (["--watch", "--count", "0"], "--count 0: give 1 or more refreshes"),
    (["--count", "2"], "--count counts --watch's refreshes: add --watch"),
    (["--watch", "soon"], "argument --watch: invalid float value: 'soon'"),
])
def test_watch_arguments_that_cannot_work_are_one_line_errors(arguments, message, inventory, capsys):
    assert cli_main(["status", "-i", str(inventory), *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fm9g-deploy: error: ") and message in err[0]


def _stub_status(monkeypatch, reads):
    """run_status against stand-ins for the hosts: ``reads`` are what each playbook run reads."""
    from fm9g_deploy import ansible
    from fm9g_deploy.commands import common
    from fm9g_deploy.config import parse_config

    monkeypatch.setattr(common, "config_for", lambda args: parse_config("model: {name: tiny-random}\nprofile: cpu\n"))
    monkeypatch.setattr(ansible, "serving_hosts", lambda inventory, limit=None: None)
    planned = []
    monkeypatch.setattr(fleet_status, "desired_state",
                        lambda *a, **k: planned.append(1) or DesiredState(specs={"h1": [_spec(0)]}, release=RELEASE))
    calls = []

    def collect(inventory, config, limit=None):
        calls.append(limit)
        read = reads[min(len(calls), len(reads)) - 1]
        if isinstance(read, BaseException):
            raise read
        return read

    monkeypatch.setattr(status_command, "collect_status", collect)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    return calls, planned


def _args(inventory, **values):
    return argparse.Namespace(**{"inventory": inventory, "config": None, "limit": None, "json": False, "watch": None,
                                 "count": None, **values})


def test_json_keeps_host_to_report_and_adds_the_live_fields(inventory, monkeypatch, capsys):
    metrics = {"requests_running": 1, "requests_waiting": 0, "kv_cache_usage": 0.1,
               "generation_tokens_per_s": 5.0, "prompt_tokens_per_s": 1.0}
    _stub_status(monkeypatch, [{"h1": _report(_replica(0, _spec(0), metrics=metrics, metrics_problem=None))}])
    assert status_command.run_status(_args(inventory, json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["h1"]
    replica = report["h1"]["replicas"][0]
    assert replica["ready"] is True and replica["restarts"] == 0 and replica["metrics"] == metrics
    assert replica["drift"] == [] and report["h1"]["drift"] == [] and report["h1"]["release"] == RELEASE


def test_watch_refreshes_count_times_planning_once(inventory, monkeypatch, capsys):
    ready = {"h1": _report(_replica(0, _spec(0)))}
    calls, planned = _stub_status(monkeypatch, [ready, ready, ready])
    assert status_command.run_status(_args(inventory, watch=1.0, count=3)) == 0
    assert len(calls) == 3 and planned == [1]
    assert "h1" in capsys.readouterr().out


def test_watch_keeps_watching_through_a_failed_read_and_exits_as_the_last_read(inventory, monkeypatch, capsys):
    from fm9g_deploy.errors import OperationFailed

    down = {"h1": _report(_replica(0, _spec(0), ready=False))}
    calls, _ = _stub_status(monkeypatch, [OperationFailed("reading status failed: h1: unreachable"), down])
    assert status_command.run_status(_args(inventory, watch=1.0, count=2)) == 1
    assert len(calls) == 2


def test_ctrl_c_ends_the_watch_quietly(inventory, monkeypatch, capsys):
    ready = {"h1": _report(_replica(0, _spec(0), ready=False))}
    calls, _ = _stub_status(monkeypatch, [ready, KeyboardInterrupt()])
    assert status_command.run_status(_args(inventory, watch=5.0)) == 0
    assert len(calls) == 2 and "Traceback" not in capsys.readouterr().err
