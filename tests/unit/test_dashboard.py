"""The Grafana dashboard (roles/fm9g_monitoring/files/fm9g-fleet-dashboard.json): importable as it
is, every query well-formed PromQL on the monitoring contract's metrics only, and every quantity of
the issue shown for the fleet and per replica. Whether the queries return data is for a deployed
sandbox (tests/dashboard_queries.py makes them runnable there)."""

from __future__ import annotations

import json
import re
from itertools import combinations

import pytest

from tests.conftest import PROJECT_ROOT
from tests.dashboard_queries import concrete, iter_panels, load, panel_queries

DASHBOARD = PROJECT_ROOT / "roles/fm9g_monitoring/files/fm9g-fleet-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UNITS = {"reqps", "s", "percentunit", "short"}

_HISTOGRAMS = ("time_to_first_token_seconds", "request_time_per_output_token_seconds", "inter_token_latency_seconds",
               "e2e_request_latency_seconds", "request_queue_time_seconds")
#: Every metric the monitoring stack promises (the scrape jobs fm9g-vllm, fm9g-node, fm9g-nginx and
#: fm9g-gateway-log); a name outside it would chart nothing.
CONTRACT = {
    "up",
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    *(f"vllm:{name}{part}" for name in _HISTOGRAMS for part in ("_bucket", "_sum", "_count")),
    "fm9g_replica_restarts_total", "fm9g_replica_failed",
    "nginx_up", "nginx_connections_active", "nginx_http_requests_total",
    "fm9g_gateway_responses_total",
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "or", "and", "unless", "bool",
             "offset", "inf", "nan"}

DOC = load(DASHBOARD)
PANELS = list(iter_panels(DOC))
QUERIES = panel_queries(DASHBOARD)
IDS = [f"{title}/{ref}" for title, ref, _ in QUERIES]


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in matchers and by/on lists) or durations."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in found if name.lower() not in _KEYWORDS}


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in _strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def test_the_dashboard_is_an_importable_grafana_dashboard():
    assert DOC["schemaVersion"] == 39
    assert "__inputs" not in DOC and "__requires" not in DOC  # no import-time prompts: the variable picks
    assert DOC["title"] and DOC["uid"]
    assert json.loads(json.dumps(DOC)) == DOC


def test_the_datasource_is_a_variable_and_host_and_replica_are_multi_value_queries():
    variables = {variable["name"]: variable for variable in DOC["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    expected = {"host": 'label_values(up{job="fm9g-vllm"}, host)',
                "replica": 'label_values(up{job="fm9g-vllm", host=~"$host"}, replica)'}
    for name, query in expected.items():
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["definition"] == query
        assert variable["query"]["query"] == query
        assert (variable["multi"], variable["includeAll"], variable["allValue"]) == (True, True, ".*")


def test_panel_ids_are_unique_rows_included():
    ids = [panel["id"] for panel in DOC["panels"]] + [inner["id"] for panel in DOC["panels"]
                                                       for inner in panel.get("panels") or []]
    assert len(ids) == len(set(ids))
    assert all(isinstance(panel_id, int) for panel_id in ids)


@pytest.mark.parametrize("row,panel", PANELS, ids=[f"{row}/{panel['title']}" for row, panel in PANELS])
def test_each_panel_is_placed_and_queries_prometheus_through_the_variable(row, panel):
    grid = panel["gridPos"]
    assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y"))
    assert grid["h"] > 0 and 0 < grid["w"] and grid["x"] + grid["w"] <= 24
    assert panel["type"] in ("timeseries", "stat")
    assert panel["datasource"] == DATASOURCE
    assert panel["fieldConfig"]["defaults"]["unit"] in UNITS
    targets = panel["targets"]
    assert targets
    assert all(target["datasource"] == DATASOURCE for target in targets)
    refs = [target["refId"] for target in targets]
    assert len(refs) == len(set(refs))
    assert all(target["expr"].strip() for target in targets)


def test_panels_do_not_overlap():
    def cells(panel):
        grid = panel["gridPos"]
        return {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}

    top = [panel for panel in DOC["panels"]]  # expanded rows lay their panels out at the top level
    for one, other in combinations(top, 2):
        assert not cells(one) & cells(other), (one["title"], other["title"])


@pytest.mark.parametrize("title,ref,expr", QUERIES, ids=IDS)
def test_each_query_is_runnable_once_concrete(title, ref, expr):
    runnable = concrete(expr)
    assert "$" not in runnable
    assert balanced(runnable)
    assert metric_names(runnable), "selects no metric"
    assert metric_names(runnable) <= CONTRACT, metric_names(runnable) - CONTRACT


@pytest.mark.parametrize("title,ref,expr", QUERIES, ids=IDS)
def test_template_variables_only_match_as_regexes(title, ref, expr):
    # "All" is `.*`, which only a regex matcher (=~) reads as "any value".
    for match in re.finditer(r"\$\{?(host|replica)\b", expr):
        assert expr[:match.start()].endswith('=~"'), expr


@pytest.mark.parametrize("title,ref,expr", QUERIES, ids=IDS)
def test_counters_that_may_have_no_series_still_give_one(title, ref, expr):
    # No 5xx yet means no 5xx series: a bare query would show "no data" instead of 0.
    if re.search(r'fm9g_gateway_responses_total\{[^}]*code=~"5', expr):
        assert re.search(r"\bor\b", expr), expr
        fallback = expr.split(" or ", 1)[1]
        assert "vector(0)" in fallback or ("* 0" in fallback and metric_names(fallback)), expr


def _targets(level: str):
    """(expr, legend) of the fleet row's or the per-replica row's targets."""
    rows = [row for row, _ in PANELS]
    fleet, per_replica = rows[0], rows[-1]
    assert fleet != per_replica
    wanted = fleet if level == "fleet" else per_replica
    return [(target["expr"], target.get("legendFormat", "")) for row, panel in PANELS if row == wanted
            for target in panel["targets"]]


#: The issue's quantities: (name, metric, what the expression must also hold).
QUANTITIES = [
    ("requests running", "vllm:num_requests_running", ()),
    ("requests waiting", "vllm:num_requests_waiting", ()),
    ("generation tokens per second", "vllm:generation_tokens_total", ("rate(", "[$__rate_interval]")),
    ("prompt tokens per second", "vllm:prompt_tokens_total", ("rate(", "[$__rate_interval]")),
    ("TTFT p50", "vllm:time_to_first_token_seconds_bucket", ("histogram_quantile(0.5,", "le)")),
    ("TTFT p95", "vllm:time_to_first_token_seconds_bucket", ("histogram_quantile(0.95,", "le)")),
    ("TPOT p50", "vllm:request_time_per_output_token_seconds_bucket", ("histogram_quantile(0.5,", "le)")),
    ("TPOT p95", "vllm:request_time_per_output_token_seconds_bucket", ("histogram_quantile(0.95,", "le)")),
    ("KV-cache usage", "vllm:kv_cache_usage_perc", ()),
    ("engine restarts", "fm9g_replica_restarts_total", ("increase(",)),
    ("gateway 5xx per second", "fm9g_gateway_responses_total", ('code=~"5.."', "rate(")),
]


@pytest.mark.parametrize("name,metric,parts", QUANTITIES, ids=[q[0] for q in QUANTITIES])
def test_each_quantity_is_charted_for_the_fleet(name, metric, parts):
    matching = [expr for expr, _ in _targets("fleet") if metric in metric_names(concrete(expr))
                and all(part in expr for part in parts)]
    assert matching, f"no fleet panel shows {name}"
    assert all("$host" not in expr and "by (host" not in expr for expr in matching)  # the whole fleet


@pytest.mark.parametrize("name,metric,parts", QUANTITIES, ids=[q[0] for q in QUANTITIES])
def test_each_quantity_is_charted_per_replica(name, metric, parts):
    matching = [(expr, legend) for expr, legend in _targets("per replica")
                if metric in metric_names(concrete(expr)) and all(part in expr for part in parts)]
    assert matching, f"no per-replica panel shows {name}"
    for expr, legend in matching:
        if metric == "fm9g_gateway_responses_total":  # a gateway is per host, not per replica
            assert "by (host)" in expr and 'host=~"$host"' in expr and "{{host}}" in legend
        else:
            assert re.search(r"by \(host, replica\b", expr) and 'host=~"$host", replica=~"$replica"' in expr
            assert "{{host}}/{{replica}}" in legend


def test_the_fleet_shows_how_many_replicas_are_up():
    stats = [panel for row, panel in PANELS if panel["type"] == "stat"]
    assert any(target["expr"] == 'sum(up{job="fm9g-vllm"})' for panel in stats for target in panel["targets"])


# -- the helper itself -----------------------------------------------------------------------------

def test_concrete_fills_in_every_macro_and_variable_and_leaves_the_rest():
    expr = ('rate(x{host=~"$host", replica=~"${replica}", a=~"${host:regex}"}[$__rate_interval]) '
            "+ increase(x[$__range]) + rate(x[$__interval]) + $__interval_ms + $hostname")
    assert concrete(expr, "2m") == ('rate(x{host=~".*", replica=~".*", a=~".*"}[2m]) '
                                    "+ increase(x[1h]) + rate(x[2m]) + $__interval_ms + $hostname")
    assert concrete("rate(x[${__rate_interval}])") == "rate(x[1m])"


def test_panel_queries_reach_into_collapsed_rows(tmp_path):
    dashboard = {"panels": [
        {"id": 1, "type": "timeseries", "title": "top", "targets": [{"refId": "A", "expr": "up"}]},
        {"id": 2, "type": "row", "title": "folded", "collapsed": True, "panels": [
            {"id": 3, "type": "timeseries", "title": "inner", "targets": [{"refId": "A", "expr": "a"},
                                                                        {"refId": "B", "expr": "b"}]}]},
        {"id": 4, "type": "row", "title": "open", "collapsed": False, "panels": []},
        {"id": 5, "type": "stat", "title": "after", "targets": [{"refId": "A", "expr": "c"}]},
    ]}
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard))
    assert panel_queries(path) == [("top", "A", "up"), ("inner", "A", "a"), ("inner", "B", "b"), ("after", "A", "c")]
    assert [(row, panel["title"]) for row, panel in iter_panels(dashboard)] == [
        ("", "top"), ("folded", "inner"), ("open", "after")]


@pytest.mark.parametrize("expr,names", [
    ('histogram_quantile(0.95, sum by (host, le) (rate(a:b_bucket{le="1", x=~"y"}[5m])))', {"a:b_bucket"}),
    ("sum(x) or on() vector(0)", {"x"}),
    ("sum by (host) (rate(x[1m])) or sum by (host) (up{job=\"j\"}) * 0", {"x", "up"}),
    ("max(x offset 5m) > bool 1e3", {"x"}),
])
def test_metric_names_are_what_a_query_selects(expr, names):
    assert metric_names(expr) == names
