"""`status` against what `deploy` would do now: each replica's config hash and release compared
with the desired ones (drift), and the status table's rows and notes.

The hosts report what they run (library/fm9g_replica_status.py); the desired state is planned here
on the control node, once per `status` run, exactly as `deploy` plans it. Everything but
``desired_state`` is pure: reports in, reports or rows out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

#: Hex digits of a config hash or a release shown and compared in the table.
SHORT = 12
COLUMNS = ("host", "replica", "state", "ready", "uptime", "restarts", "running", "waiting", "KV %", "tok/s",
           "release", "config", "last cause")
#: Appended to a host's release where it is not the desired one.
RELEASE_DIFFERS = " ≠"


@dataclass(frozen=True)
class DesiredState:
    """What `deploy` would put on each host now, or why that cannot be known here."""

    #: host -> the specs of its planned replicas, as dicts (as the hosts' replica-N.json hold them).
    specs: dict[str, list[dict]] = field(default_factory=dict)
    #: The model release's sha256.
    release: str = ""
    #: Why the desired state is unknown (no artifact cache on this control node, a plan that fails).
    problem: str | None = None


def desired_state(config, inventory, limit: str | None = None) -> DesiredState:
    """Plan as `deploy` does; a problem doing so is the answer's ``problem``, never an error: status
    must still show what runs."""
    from fm9g_deploy.errors import OperationFailed, UserError, one_line
    from fm9g_deploy.facts import read_hosts
    from fm9g_deploy.hostvars import load_stack
    from fm9g_deploy.planner import plan_deployment, refuse_multi_host
    from fm9g_deploy.replica_spec import deployment_specs

    try:
        stack = load_stack(config)
        hosts = read_hosts(inventory, limit=limit, serve_mode=config.serving.serve_mode)
        plan = plan_deployment(config, hosts.gpus)
        refuse_multi_host(plan, "deploy")
        specs = deployment_specs(config, stack.profile, plan, hosts.networks)
        release = stack.model_pin()["sha256"]
    except (UserError, OperationFailed) as exc:
        return DesiredState(problem=one_line(str(exc), 300))
    # Through JSON, as the hosts' copies went: tuples become lists, so equal specs hash equal.
    as_dicts = json.loads(json.dumps({host: [spec.to_dict() for spec in host_specs]
                                      for host, host_specs in specs.items()}))
    return DesiredState(specs=as_dicts, release=release)


def config_hash(spec: dict) -> str:
    """A replica spec's short fingerprint: equal specs, equal hashes, on every machine."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:SHORT]


def release_of(model_dir: str) -> str:
    """The release (its sha256) of the model's current directory, ``<root>/releases/<sha256>[/subdir]``;
    "" when it has none."""
    if "/releases/" not in (model_dir or ""):
        return ""
    return model_dir.split("/releases/", 1)[1].strip("/").split("/", 1)[0]


def _differing_keys(deployed: dict, desired: dict) -> list[str]:
    return sorted(key for key in set(deployed) | set(desired) if deployed.get(key) != desired.get(key))


def with_drift(reports: dict, desired: DesiredState) -> dict:
    """``reports`` (host -> the host's report) with the desired state's comparison added: per replica
    ``config_hash``, ``desired_config_hash`` and ``drift``; per host ``release``, ``desired_release``,
    ``drift``, and ``desired_problem`` where the desired state is unknown. A drift of None is unknown."""
    annotated = {}
    for host, report in reports.items():
        report = dict(report)
        replicas = [dict(replica) for replica in report.get("replicas") or []]
        report["replicas"] = replicas
        report["release"] = release_of(report.get("model_dir", ""))
        for replica in replicas:
            replica["config_hash"] = config_hash(replica["spec"]) if replica.get("spec") else None
        if desired.problem:
            report.update(desired_release=None, drift=None, desired_problem=desired.problem)
            for replica in replicas:
                replica.update(desired_config_hash=None, drift=None)
        elif "problem" in report and not replicas:
            # The host could not be read: what it runs, and so its drift, is unknown.
            report.update(desired_release=desired.release, drift=None)
        else:
            planned = {int(spec["index"]): spec for spec in desired.specs.get(host, [])}
            for replica in replicas:
                spec = planned.get(int(replica["index"]))
                replica["desired_config_hash"] = config_hash(spec) if spec else None
                replica["drift"] = _replica_drift(replica, spec)
            report.update(desired_release=desired.release,
                          drift=_host_drift(report["release"], host in desired.specs, planned, replicas, desired))
        annotated[host] = report
    return annotated


def _host_drift(release: str, in_plan: bool, planned: dict, replicas: list[dict], desired: DesiredState) -> list[str]:
    drift = [] if in_plan else ["host not in the plan"]
    if not release:
        drift.append(f"no model release installed (desired {desired.release[:SHORT]})")
    elif release != desired.release:
        drift.append(f"release {release[:SHORT]} differs from the desired {desired.release[:SHORT]}")
    deployed = {int(replica["index"]) for replica in replicas}
    return drift + [f"planned replica {index} not deployed" for index in sorted(set(planned) - deployed)]


def _replica_drift(replica: dict, spec: dict | None) -> list[str]:
    if spec is None:
        return ["not in the plan"]
    if replica["config_hash"] is None:
        return [f"deployed spec unreadable (desired {config_hash(spec)})"]
    if replica["config_hash"] != replica["desired_config_hash"]:
        keys = ", ".join(_differing_keys(replica["spec"], spec))
        return [f"config differs from the desired spec ({replica['config_hash']} → "
                f"{replica['desired_config_hash']}: {keys})"]
    return []


def all_ready(reports: dict) -> bool:
    return bool(reports) and all(report.get("replicas") and all(r["ready"] for r in report["replicas"])
                                 for report in reports.values())


# -- the table ------------------------------------------------------------------------------------

def format_uptime(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _number(value, pattern: str = "{:g}") -> str:
    return "-" if value is None else pattern.format(value)


def _release_cell(report: dict) -> str:
    release = report.get("release", "")
    if not release:
        return "-"
    desired = report.get("desired_release")
    return release[:SHORT] + (RELEASE_DIFFERS if desired and release != desired else "")


def _config_cell(replica: dict) -> str:
    shown = replica.get("config_hash") or "-"
    if replica.get("drift") is None:
        return f"{shown} ?"
    return f"{shown} {'DRIFT' if replica['drift'] else 'ok'}"


def table_rows(reports: dict) -> list[tuple[str, ...]]:
    """One row per replica (per host without replicas), in COLUMNS' order."""
    rows = []
    for host, report in reports.items():
        release = _release_cell(report)
        if not report.get("replicas"):
            rows.append((host, "-", (report.get("problem") or "no replicas")[:60], "no", "-", "-", "-", "-", "-",
                         "-", release, "-", "-"))
        for replica in report.get("replicas") or []:
            metrics = replica.get("metrics") or {}
            usage = metrics.get("kv_cache_usage")
            rows.append((
                host, _replica_cell(replica), f"{replica['active_state']}/{replica['sub_state']}",
                "yes" if replica["ready"] else f"no ({replica.get('problem') or 'not listed'})",
                format_uptime(replica.get("uptime_s")), str(replica["restarts"]),
                _number(metrics.get("requests_running")), _number(metrics.get("requests_waiting")),
                _number(None if usage is None else usage * 100, "{:.1f}"),
                _number(metrics.get("generation_tokens_per_s"), "{:.1f}"),
                release, _config_cell(replica), (replica.get("last_cause") or "-")[:80],
            ))
    return rows


def _replica_cell(replica: dict) -> str:
    """The replica's index; a node of a replica over hosts says its rank ("0 head", "0 node 1")."""
    node = replica.get("node")
    if not node:
        return str(replica["index"])
    return f"{replica['index']} {'head' if node['rank'] == 0 else 'node ' + str(node['rank'])}"


def table_notes(reports: dict) -> list[str]:
    """The lines printed under the table: dtype fallbacks, drift, why drift is unknown, unread metrics."""
    notes: list[str] = []
    for host, report in reports.items():
        for replica in report.get("replicas") or []:
            if replica.get("dtype_note"):
                notes.append(f"{host} replica {replica['index']} runs in {replica['dtype']}: {replica['dtype_note']}")
    for host, report in reports.items():
        if report.get("desired_problem"):
            notes.append(f"drift unknown (the desired state cannot be planned here): {report['desired_problem']}")
        notes += [f"{host}: {item}" for item in report.get("drift") or []]
        for replica in report.get("replicas") or []:
            where = f"{host} replica {replica['index']}"
            notes += [f"{where}: {item}" for item in replica.get("drift") or []]
            node = replica.get("node")
            if node and node["rank"] == 0:
                notes.append(f"{where} is one replica over {', '.join(node['hosts'])} (its head; the others are "
                             "headless nodes that joined its engine)")
            if replica.get("ready") and replica.get("metrics_problem") and not (node and node["rank"] > 0):
                notes.append(f"{where}: no serving metrics: {replica['metrics_problem']}")
    return list(dict.fromkeys(notes))
