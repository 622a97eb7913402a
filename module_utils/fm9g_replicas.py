"""Shared by the fm9g_replica_* modules: the replicas' specs as deployed, unit state, real requests,
and vLLM's serving metrics (its Prometheus text).

Runs on the host (stdlib only). The API key is read from the root-only env file here, on the
host, so it never travels through Ansible.
"""

import calendar
import glob
import json
import math
import os
import re
import time
import urllib.error
import urllib.request

PROPERTIES = ("ActiveState", "SubState", "UnitFileState", "NRestarts", "ExecMainStartTimestampMonotonic", "MainPID")


def read_env_file(path):
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


def read_json_object(path):
    """The JSON object in ``path``, or {} when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def api_key(path):
    """The key in the root-only env file ``path`` (VLLM_API_KEY=...), or "" when there is none."""
    return read_env_file(path).get("VLLM_API_KEY", "") if os.path.exists(path) else ""


def deployed_specs(config_dir):
    """The specs of the replicas deployed on this host (replica-N.json), by index."""
    specs = [read_json_object(path) for path in glob.glob(os.path.join(config_dir, "replica-*.json"))]
    return sorted((spec for spec in specs if re.match(r"^\d+$", str(spec.get("index", "")))),
                  key=lambda spec: int(spec["index"]))


def unit_properties(run_command, unit):
    rc, out, _ = run_command(["systemctl", "show", unit, "--property=" + ",".join(PROPERTIES)])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line) if rc == 0 else {}


def container_properties(run_command, docker, name):
    """The replica container's state in the unit's terms (ActiveState, SubState, restarts, uptime)."""
    rc, out, _ = run_command([docker, "container", "inspect", name])
    if rc != 0:
        return {"ActiveState": "inactive", "SubState": "absent", "UnitFileState": "absent", "uptime_s": None}
    data = json.loads(out)[0]
    state = data.get("State") or {}
    return {
        "ActiveState": "active" if state.get("Running") else "inactive",
        "SubState": state.get("Status", "unknown"),
        "UnitFileState": "restart=" + ((data.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name", ""),
        "NRestarts": data.get("RestartCount", 0),
        "MainPID": state.get("Pid", 0),
        "uptime_s": _seconds_since(state.get("StartedAt", "")) if state.get("Running") else None,
    }


def _seconds_since(timestamp):
    """Seconds since Docker's RFC 3339 timestamp (nanosecond fraction, Z)."""
    match = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", timestamp or "")
    if not match:
        return None
    started = calendar.timegm(tuple(int(part) for part in match.groups()) + (0, 0, 0))
    return max(0, round(time.time() - started))


def uptime_seconds(values):
    started = int(values.get("ExecMainStartTimestampMonotonic") or 0)
    if values.get("ActiveState") != "active" or not started:
        return None
    return round(time.clock_gettime(time.CLOCK_MONOTONIC) - started / 1e6)


def _request(port, path, key, timeout, body=None):
    data = json.dumps(body).encode("utf-8") if body is not None else None
    headers = {"Authorization": "Bearer " + key}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def served_models(port, key, timeout):
    """([model ids], problem or None) from GET /v1/models."""
    try:
        data = _request(port, "/v1/models", key, timeout)
        return [item.get("id") for item in data.get("data", [])], None
    except urllib.error.HTTPError as exc:
        return [], "HTTP %d" % exc.code
    except (OSError, ValueError) as exc:
        return [], str(getattr(exc, "reason", exc))[:120]


def one_token(port, key, model, timeout):
    """None when a 1-token completion succeeds, else why not."""
    try:
        data = _request(port, "/v1/completions", key, timeout, {"model": model, "prompt": "Hello", "max_tokens": 1})
    except urllib.error.HTTPError as exc:
        return "HTTP %d" % exc.code
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))[:120]
    return None if len(data.get("choices") or []) == 1 else "no choice in the answer"


# -- vLLM's serving metrics (Prometheus text at /metrics) ------------------------------------------

#: A sample line: name, optional label set (quoted values may hold commas, braces and escaped
#: quotes), value, optional timestamp.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)(?:\s+-?\d+)?\s*$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")
#: /metrics is a few hundred kB at most; more is not vLLM's answer.
METRICS_MAX_BYTES = 8 * 1024 * 1024
#: The metrics reported per replica: (key, vLLM's metric names, newest first, how its series combine).
GAUGES = (
    ("requests_running", ("vllm:num_requests_running",), "sum"),
    ("requests_waiting", ("vllm:num_requests_waiting",), "sum"),
    # vLLM before 0.10 named it after the GPU.
    ("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "max"),
)
COUNTER_RATES = (
    ("generation_tokens_per_s", "vllm:generation_tokens_total"),
    ("prompt_tokens_per_s", "vllm:prompt_tokens_total"),
)


def _unescape(value):
    return _ESCAPE.sub(lambda match: "\n" if match.group(1) == "n" else match.group(1), value)


def parse_prometheus_text(text):
    """{metric name: [(labels dict, value)]} of Prometheus' text format. Comments, and lines that
    do not parse, are skipped: a report from what can be read beats none."""
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))  # NaN, +Inf, -Inf and exponents included
        except ValueError:
            continue
        labels = {name: _unescape(raw) for name, raw in _LABEL.findall(match.group(2) or "")}
        samples.setdefault(match.group(1), []).append((labels, value))
    return samples


def _finite_values(samples, name):
    return [value for _, value in samples.get(name, []) if math.isfinite(value)]


def metric_sum(samples, name):
    """The sum of ``name``'s finite series, or None when it has none."""
    values = _finite_values(samples, name)
    return sum(values) if values else None


def metric_max(samples, name):
    values = _finite_values(samples, name)
    return max(values) if values else None


def counter_rate(before, after, name, elapsed):
    """Per second growth of counter ``name`` (summed over its series) between two reads, or None
    when it cannot be known: no such counter, no time elapsed, or a series that went down (the
    engine restarted between the reads and its counters began again)."""
    first, second = metric_sum(before, name), metric_sum(after, name)
    if first is None or second is None or not elapsed or elapsed <= 0:
        return None
    earlier = {tuple(sorted(labels.items())): value for labels, value in before.get(name, [])}
    for labels, value in after.get(name, []):
        key = tuple(sorted(labels.items()))
        if key in earlier and value < earlier[key]:
            return None
    if second < first:
        return None
    return (second - first) / elapsed


def _count(value):
    return int(round(value)) if value is not None else None


def serving_metrics(before, after=None, elapsed=None):
    """The per replica report from one read (gauges only) or two reads ``elapsed`` seconds apart
    (gauges from the later, and token rates)."""
    latest = after if after is not None else before
    report = {}
    for key, names, combine in GAUGES:
        value = None
        for name in names:
            if name in latest:
                value = (metric_sum if combine == "sum" else metric_max)(latest, name)
                break
        report[key] = _count(value) if key.startswith("requests_") else value
    if after is not None:
        for key, name in COUNTER_RATES:
            rate = counter_rate(before, after, name, elapsed)
            report[key] = round(rate, 2) if rate is not None else None
    return report


def read_metrics(port, timeout):
    """(samples, None) from the replica's /metrics on loopback, or (None, why not in one line)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=timeout) as response:
            text = response.read(METRICS_MAX_BYTES).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return None, "/metrics: HTTP %d" % exc.code
    except (OSError, ValueError) as exc:
        return None, ("/metrics: %s" % getattr(exc, "reason", exc)).replace("\n", " ")[:160]
    return parse_prometheus_text(text), None


def replica_metrics(ports, interval, timeout, sleep=time.sleep, clock=time.monotonic):
    """{index: {"metrics": {...}, "metrics_problem": None or why not}} for ``ports`` ({index: port}).

    Every replica is read, then one pause of ``interval`` seconds for the whole host, then every
    replica again: the token rates are the counters' growth over each replica's own elapsed time.
    ``interval`` 0 reads once and reports no rates.
    """
    first = {}
    for index, port in ports.items():
        samples, problem = read_metrics(port, timeout)
        first[index] = (samples, problem, clock())
    readable = [index for index, (samples, _, _) in first.items() if samples is not None]
    if interval > 0 and readable:
        sleep(interval)
    reports = {}
    for index, (samples, problem, started) in first.items():
        if samples is None:
            reports[index] = {"metrics": {}, "metrics_problem": problem}
            continue
        if interval <= 0:
            reports[index] = {"metrics": serving_metrics(samples), "metrics_problem": None}
            continue
        again, problem = read_metrics(ports[index], timeout)
        if again is None:
            reports[index] = {"metrics": {}, "metrics_problem": problem}
            continue
        reports[index] = {"metrics": serving_metrics(samples, again, clock() - started), "metrics_problem": None}
    return reports
