"""Shared by the fm9g_replica_* modules: the replicas' specs as deployed, unit state, real requests.

Runs on the host (stdlib only). The API key is read from the root-only env file here, on the
host, so it never travels through Ansible.
"""

import calendar
import glob
import json
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
        return {"ActiveState": "inactive", "SubState": "absent", "UnitFileState": "absent"}
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
