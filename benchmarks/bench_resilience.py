"""What faults and maintenance cost clients: recovery after an engine kill, failed requests during a
kill, a stop and a rolling update, and how long a stop drains against the work in flight.

    .venv/bin/python benchmarks/bench_resilience.py [--sandbox fm9g-sandbox] [--host host1]

Needs a deployed sandbox with two replicas on the host (`make demo`, then `replicas_per_host: 2`
in its fm9g.yml and `fm9g-deploy deploy`; the integration tests' fm9g-test has them). Everything
runs against the host's gateway from this machine, with a bounded steady load (short completions
from a few clients), and every phase stops by itself:

1. cold start: replica 0 stopped, then started, under the same load; seconds until it answers a
   completion (the baseline: on 2 cores the load slows a start down);
2. engine kill: kill -9 of replica 0's EngineCore under load; seconds until it answers again,
   against (1), and failed requests of all sent (goal: 0);
3. stop: `fm9g-deploy stop --replica 1` under load, with long streams in flight; failed requests
   and streams cut (goal: 0); how long the drain took (out of the gateway until SIGTERM, from the
   host's own clock) against how long the in-flight work took, and vLLM's own shutdown;
4. rolling update: a config change rolls both replicas under load; failed requests (goal: 0).
The host is left as it was (the config restored and deployed). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fm9g_deploy.sandbox.engine import docker_client  # noqa: E402
from fm9g_deploy.sandbox.hosts import sandbox_dir  # noqa: E402
from tests.integration.load import SteadyLoad  # noqa: E402

STREAM_TOKENS = 256


def cli(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fm9g_deploy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


class Host:
    def __init__(self, container, key: str):
        self.container, self.key = container, key

    def sh(self, command: str) -> str:
        code, output = self.container.exec_run(["sh", "-c", command])
        return output.decode(errors="replace").strip() if code == 0 else ""

    def serves(self, port: int) -> bool:
        return bool(self.sh(f"curl -sf -m 20 -H 'Authorization: Bearer {self.key}' -H 'Content-Type: application/json' "
                            f"-d '{{\"model\": \"9g\", \"prompt\": \"Hi\", \"max_tokens\": 1}}' "
                            f"http://127.0.0.1:{port}/v1/completions"))

    def engine_pid(self, index: int) -> int:
        supervisor = self.sh(f"systemctl show -p MainPID --value fm9g-replica@{index}")
        api = self.sh(f"pgrep -P {supervisor} -o")
        line = self.sh(f"ps -o pid=,args= -s {api} | grep -m1 EngineCore")
        return int(line.split()[0]) if line else 0

    def stop_times(self, index: int) -> tuple[float, float, float]:
        """(gateway told to drain it, SIGTERM, unit stopped): unix times from the host's clock."""
        import json

        out = float(self.sh("date -r /etc/nginx/fm9g/backends.json +%s.%N"))
        entries = [json.loads(line) for line in self.sh(
            f"journalctl -u fm9g-replica@{index} -o json --since -10min --output-fields=MESSAGE").splitlines() if line]

        def last(text: str) -> float:
            return max(int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in entries if text in str(e.get("MESSAGE", "")))

        return out, last("stopping (SIGTERM)"), last("Stopped fm9g-replica")

    def wait_serving(self, port: int, timeout: float = 600) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.serves(port):
                return time.monotonic() - started
            time.sleep(0.5)
        raise SystemExit(f"bench_resilience: replica on port {port} did not serve within {timeout:.0f}s")


def failed(load: SteadyLoad) -> str:
    report = load.report
    return f"{len(report.failures)} of {report.ok + len(report.failures)}"


def long_streams(url: str, key: str, count: int, results: list) -> list[threading.Thread]:
    def one():
        started = time.monotonic()
        body = {"model": "9g", "prompt": "Tell me a story", "max_tokens": STREAM_TOKENS, "stream": True,
                "ignore_eos": True}
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300,
                              headers={"Authorization": f"Bearer {key}"}) as response:
                text = "".join(response.iter_lines())
            results.append((time.monotonic() - started, text.endswith("data: [DONE]")))
        except httpx.HTTPError:
            results.append((time.monotonic() - started, False))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", default="fm9g-sandbox", help="a deployed sandbox (default: the demo's)")
    parser.add_argument("--host", default="host1")
    parser.add_argument("--workers", type=int, default=3, help="steady-load clients")
    parser.add_argument("--streams", type=int, default=3, help="long streams in flight when the stop starts")
    args = parser.parse_args()

    folder = sandbox_dir(args.sandbox)
    inventory, config_path = folder / "hosts.yml", folder / "fm9g.yml"
    if not inventory.is_file():
        sys.exit(f"bench_resilience: no sandbox {args.sandbox}; run `make demo` (or deploy one) first")
    config = yaml.safe_load(config_path.read_text())
    if (config.get("serving") or {}).get("replicas_per_host", 1) < 2:
        sys.exit(f"bench_resilience: {config_path} must have serving.replicas_per_host: 2 (and be deployed)")
    key = config["serving"]["api_key"]
    host_vars = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"][args.host]
    host = Host(docker_client().containers.get(host_vars["fm9g_sandbox_container"]), key)
    url = host_vars["fm9g_sandbox_gateway_url"]
    limit = ("--limit", args.host)
    rows: list[tuple[str, str, str]] = []

    # 1. cold start of replica 0 under the load (baseline)
    assert cli("stop", "-i", str(inventory), *limit, "--replica", "0").returncode == 0
    with SteadyLoad(url, key, workers=args.workers, max_seconds=600):
        time.sleep(3)
        host.sh("systemctl start fm9g-replica@0")
        cold = host.wait_serving(8100)
    assert cli("deploy", "-i", str(inventory), *limit).returncode == 0  # back into the gateway
    rows.append(("cold start of a replica under load (baseline)", f"{cold:.1f} s", ""))

    # 2. engine kill under load
    with SteadyLoad(url, key, workers=args.workers, max_seconds=600) as load:
        time.sleep(3)
        host.sh(f"kill -9 {host.engine_pid(0)}")
        recovery = host.wait_serving(8100)
        time.sleep(5)
    rows.append(("engine kill -9: back serving", f"{recovery:.1f} s", f"{recovery / cold:.2f}x the cold start"))
    rows.append(("engine kill -9: failed requests", failed(load), "goal 0"))

    # 3. stop under load, with long streams in flight
    streams: list[tuple[float, bool]] = []
    with SteadyLoad(url, key, workers=args.workers, max_seconds=600) as load:
        threads = long_streams(url, key, args.streams, streams)
        time.sleep(1)
        started, started_wall = time.monotonic(), time.time()
        stop = cli("stop", "-i", str(inventory), *limit, "--replica", "1")
        stop_took = time.monotonic() - started
        for thread in threads:
            thread.join(timeout=300)
    assert stop.returncode == 0, stop.stderr[-1000:]
    longest = max((seconds for seconds, _ in streams), default=0.0)
    out_of_gateway, sigterm, stopped = host.stop_times(1)
    rows.append(("stop: failed requests", failed(load), "goal 0"))
    rows.append(("stop: streams in flight cut", f"{sum(1 for _, ok in streams if not ok)} of {len(streams)}", "goal 0"))
    rows.append(("stop: drain (out of the gateway to SIGTERM)", f"{sigterm - out_of_gateway:.1f} s",
                 f"the in-flight work took up to {longest:.1f} s from the stop's start"))
    rows.append(("stop: vLLM's own shutdown (SIGTERM to exit)", f"{stopped - sigterm:.1f} s", ""))
    rows.append(("stop: the whole command", f"{stop_took:.1f} s",
                 f"Ansible until out of the gateway: {out_of_gateway - started_wall:.1f} s"))
    assert cli("deploy", "-i", str(inventory), *limit).returncode == 0

    # 4. rolling update under load (a config change rolls both replicas; then back)
    original = config_path.read_text()
    changed = yaml.safe_load(original)
    changed["serving"]["cpu_kvcache_space_gib"] = changed["serving"].get("cpu_kvcache_space_gib", 1) + 1
    try:
        config_path.write_text(yaml.safe_dump(changed, sort_keys=False))
        with SteadyLoad(url, key, workers=args.workers, max_seconds=1200) as load:
            started = time.monotonic()
            roll = cli("deploy", "-i", str(inventory), *limit)
            rolled_in = time.monotonic() - started
    finally:
        config_path.write_text(original)
    assert roll.returncode == 0, roll.stderr[-1000:]
    rows.append(("rolling update (2 replicas): failed requests", failed(load), f"goal 0; took {rolled_in:.0f} s"))
    assert cli("deploy", "-i", str(inventory), *limit).returncode == 0

    print(f"\nresilience benchmark: sandbox {args.sandbox}, {args.host}, 2 replicas behind its gateway, "
          f"{args.workers} steady clients")
    for what, figure, note in rows:
        print(f"{what:45} {figure:>14}   {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
