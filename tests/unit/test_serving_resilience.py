"""Serving resilience as the control node and the role render it: drain, supervision and crash-loop
settings from the config and the profile, the refusal to restart a plan's only replica, and the
one-line errors of the new options. The behaviour itself is tested with real vLLM in
tests/integration/test_resilience.py and test_fleet_gateway.py."""

from __future__ import annotations

import pytest

from fm9g_deploy.config import parse_config
from fm9g_deploy.errors import UserError
from fm9g_deploy.profiles import load_profile
from tests.conftest import run_cli
from tests.unit.role_render import render_role_template, replica_spec, role_value


def test_drain_timeout_reaches_vllm_systemd_and_docker_consistently():
    spec = replica_spec("cpu", "{drain_timeout_s: 45}")
    assert spec["argv"][-3:] == ["--enforce-eager", "--shutdown-timeout", "45"]  # the profile's args, then the drain
    supervisor = spec["argv"][:spec["argv"].index("--")]
    assert supervisor[supervisor.index("--stop-timeout") + 1] == "60"  # drain < supervisor < systemd and Docker
    assert spec["stop_timeout_s"] == 75
    drop_in = render_role_template("spec.conf.j2", _fm9g_replica_spec=spec)
    assert "TimeoutStopSec=75" in drop_in and "ExecStart=\nExecStart=" in drop_in
    assert "KillMode=mixed" in render_role_template("fm9g-replica@.service.j2")  # SIGTERM to the supervisor alone
    container = replica_spec("cpu", "{drain_timeout_s: 45, serve_mode: container}")
    assert container["stop_timeout_s"] == 75 and container["argv"][-2:] == ["--shutdown-timeout", "45"]


def test_a_profile_without_a_drain_flag_passes_none():
    assert "--shutdown-timeout" not in replica_spec("cuda121")["argv"]
    assert load_profile("cuda121").vllm_drain_flag is None  # the 0.5 fork has none
    assert load_profile("cpu").vllm_drain_flag == "--shutdown-timeout"


def test_the_unit_restarts_whatever_vllm_exits_with_but_not_after_a_crash_loop():
    spec = replica_spec("cpu", "{crash_limit: 3, crash_window_s: 120}")
    assert spec["argv"][1].endswith("/fm9g_replica_supervisor.py")
    assert "--crash-limit 3 --crash-window 120" in " ".join(spec["argv"])
    unit = render_role_template("fm9g-replica@.service.j2")
    assert "Restart=on-failure" in unit and "RestartPreventExitStatus=3" in unit and "OOMPolicy=continue" in unit
    assert "ExecStart" not in unit  # the command is the replica's spec, in its drop-in


def test_extra_environment_reaches_units_and_containers():
    env = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    environment = render_role_template("replica.env.j2", fm9g_replica_extra_env=env)
    assert "NCCL_NVLS_ENABLE=0\n" in environment and "TORCH_SYMM_MEM_DISABLE_MULTICAST=1\n" in environment
    container = replica_spec("cuda130", "{serve_mode: container}")
    value = role_value("{{ _fm9g_replica_container }}", fm9g_replica_extra_env=env, _fm9g_replica_spec=container,
                       fm9g_replica_container_image="fm9g-vllm:x")
    assert value["environment"]["NCCL_NVLS_ENABLE"] == "0"


def test_a_probed_fallback_dtype_is_what_replicas_run_in():
    environment = render_role_template("replica.env.j2", fm9g_replica_probed_dtype="float32")
    assert "FM9G_DTYPE=float32" in environment
    assert "FM9G_DTYPE=auto" in render_role_template("replica.env.j2")
    container = replica_spec("cpu", "{serve_mode: container}")
    value = role_value("{{ _fm9g_replica_container }}", fm9g_replica_probed_dtype="float32",
                       _fm9g_replica_spec=container, fm9g_replica_container_image="fm9g-vllm:x")
    assert value["environment"]["FM9G_DTYPE"] == "float32"
    assert "${FM9G_DTYPE}" in value["command"]  # the entry point fills it in, as systemd does


@pytest.mark.parametrize("field,value", [("drain_timeout_s", -1), ("crash_limit", 0), ("crash_window_s", 5)])
def test_resilience_settings_are_validated(field, value):
    with pytest.raises(UserError, match=f"serving.{field}"):
        parse_config(f"serving:\n  {field}: {value}\n")


def test_defaults_of_the_resilience_settings():
    serving = parse_config("").serving
    assert (serving.drain_timeout_s, serving.crash_limit, serving.crash_window_s) == (120, 5, 600)


def test_stop_of_a_negative_replica_index_is_a_one_line_error(tmp_path):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    result = run_cli("stop", "-i", str(tmp_path / "hosts.yml"), "--replica", "-1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--replica -1" in result.stderr


def test_deploy_and_stop_explain_the_new_options():
    assert "--accept-downtime" in run_cli("deploy", "--help").stdout
    assert "--replica INDEX" in run_cli("stop", "--help").stdout


def test_plan_says_where_the_engine_falls_back_to_another_dtype(tmp_path):
    import json

    from fm9g_deploy.facts import _probe_result, engine_dtype_notes

    cpu = load_profile("cpu")
    probe = tmp_path / "host1.probe"
    probe.write_text(json.dumps({"key": "k", "result": {"dtype": "float32", "fell_back": True,
                                                        "reason": "bfloat16 faulted: killed by SIGILL"}}))
    notes = engine_dtype_notes({"host1": _probe_result(probe), "host2": {"dtype": "bfloat16", "fell_back": False}}, cpu)
    assert notes == ["host1: serves in float32: bfloat16 faulted: killed by SIGILL"]
    assert "float32 where that faults" in engine_dtype_notes({}, cpu)[0]
    assert engine_dtype_notes({}, load_profile("cuda121")) == []
    probe.write_text("[1, 2]")
    assert _probe_result(probe) == {}
