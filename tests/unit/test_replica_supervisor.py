"""fm9g_replica_supervisor.py: vLLM's API server exits 0 (or answers 503 forever) when its engine dies.

The supervisor runs as a real subprocess around tests/doubles/fake_vllm_server.py (a TEST DOUBLE of
vLLM's API server) with tiny timings on free loopback ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_file_module

ROOT = Path(__file__).resolve().parents[2]
SUPERVISOR = ROOT / "roles" / "fm9g_replica" / "files" / "fm9g_replica_supervisor.py"
FAKE = ROOT / "tests" / "doubles" / "fake_vllm_server.py"
GIVE_UP = 3
FAST = ["--health-interval", "0.2", "--health-failures", "3", "--health-timeout", "1",
        "--backoff-initial", "0.2", "--backoff-max", "0.8", "--crash-limit", "5", "--crash-window", "600",
        "--stop-timeout", "10"]


def load_supervisor_module():
    return load_file_module(SUPERVISOR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_gone(pid: int) -> bool:
    """Gone or a zombie nobody has reaped yet (SIGKILLed either way)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Run:
    """One supervisor subprocess with its state file; `close()` leaves nothing running."""

    def __init__(self, tmp_path: Path, fake_args=(), options=(), argv=None):
        self.port = free_port()
        self.state_path = tmp_path / "state" / "replica-0.json"
        self.out = open(tmp_path / "supervisor.out", "wb")
        self.err = open(tmp_path / "supervisor.err", "wb")
        self.err_path = tmp_path / "supervisor.err"
        self.out_path = tmp_path / "supervisor.out"
        child = argv or [sys.executable, str(FAKE), "--port", str(self.port), *fake_args]
        cmd = [sys.executable, str(SUPERVISOR), "--state-file", str(self.state_path), "--port", str(self.port),
               *FAST, *options, "--", *child]
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=self.err, start_new_session=True)
        self.child_pids: set[int] = set()

    def state(self) -> dict:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        if data.get("pid"):
            self.child_pids.add(data["pid"])
        return data

    def wait_for(self, predicate, timeout=15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.state()
            if data and predicate(data):
                return data
            time.sleep(0.05)
        raise AssertionError("timed out; state=%s\nstderr:\n%s" % (self.state(), self.stderr()))

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def terminate(self, timeout=15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc.pid)
        self.proc.wait(timeout=5)
        for pid in self.child_pids | {self.state().get("pid") or 0} - {0}:
            kill_group(pid)
        self.out.close()
        self.err.close()


@pytest.fixture
def supervise(tmp_path):
    runs = []

    def start(*args, **kwargs) -> Run:
        run = Run(tmp_path, *args, **kwargs)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


# ------------------------------------------------------------- the faults, end to end

def test_child_exiting_0_is_a_crash_and_is_restarted(supervise):
    run = supervise(["--exit-after", "0.5", "--exit-code", "0"])
    state = run.wait_for(lambda s: s.get("restarts", 0) >= 1 and s["crashes"])
    cause = state["crashes"][0]["cause"]
    assert "exited 0 without being asked to stop" in cause
    assert "Worker proc VllmWorker-0 died unexpectedly" in cause
    assert state["crashes"][0]["exit"] == "exited 0 without being asked to stop"
    assert state["supervisor_pid"] == run.proc.pid
    assert "fm9g-supervisor: crash: exited 0" in run.stderr()
    assert "died unexpectedly" in run.stdout()  # the child's output is copied through
    assert run.terminate() == 0


def test_sigill_is_a_crash_and_is_restarted(supervise):
    run = supervise(["--sigill-after", "0.5"])
    state = run.wait_for(lambda s: s.get("restarts", 0) >= 1 and s["crashes"])
    assert "SIGILL" in state["crashes"][0]["cause"]
    assert state["crashes"][0]["exit"] == "killed by SIGILL"


def test_health_503_after_serving_kills_and_restarts(supervise):
    run = supervise(["--health-503-after", "0.8"])
    run.wait_for(lambda s: s["state"] == "serving" and s["serving_since"])
    first_pid = run.state()["pid"]
    state = run.wait_for(lambda s: s.get("restarts", 0) >= 1 and s["crashes"])
    cause = state["crashes"][0]["cause"]
    assert cause.startswith("engine dead: /health failed 3 times"), cause
    assert "HTTP 503" in cause
    assert pid_gone(first_pid)


def test_crash_at_start_repeated_gives_up(supervise):
    run = supervise(["--crash-at-start"], options=["--crash-limit", "3"])
    assert run.proc.wait(timeout=20) == GIVE_UP
    state = run.state()
    assert state["state"] == "failed" and state["pid"] is None
    assert state["last_cause"].startswith("crash loop: 3 crashes in 600 s; last: exited 1: RuntimeError: boom")
    assert len(state["crashes"]) == 3 and state["restarts"] == 2
    assert run.stderr().strip().splitlines()[-1].startswith("fm9g-supervisor: giving up: crash loop")


def test_backoff_grows_between_crashes(supervise):
    run = supervise(["--crash-at-start"],
                    options=["--crash-limit", "4", "--backoff-initial", "0.3", "--backoff-max", "5"])
    assert run.proc.wait(timeout=20) == GIVE_UP
    at = [c["at"] for c in run.state()["crashes"]]
    gaps = [b - a for a, b in zip(at, at[1:])]
    # delays 0.3 s then 0.6 s, each waited in full (plus a Python start each time, whose length a
    # loaded machine varies too much to compare the gaps with each other)
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps
    assert "backing off 0.3s" in run.stderr() and "backing off 0.6s" in run.stderr()


def test_sigterm_forwards_to_child_which_drains_then_supervisor_exits_0(supervise):
    run = supervise(["--drain", "1.0"])
    run.wait_for(lambda s: s["state"] == "serving")
    child = run.state()["pid"]
    started = time.monotonic()
    assert run.terminate() == 0
    assert time.monotonic() - started >= 0.9  # the drain was waited for, not cut short
    out = run.stdout()
    assert "got SIGTERM, draining" in out and "drain done" in out
    state = run.state()
    assert state["state"] == "stopped" and state["pid"] is None
    assert state["restarts"] == 0 and state["crashes"] == [] and state["last_exit"] == "exited 0"
    assert pid_gone(child)
    assert "Traceback" not in run.stderr()


def test_stop_during_backoff_exits_0_at_once(supervise):
    run = supervise(["--crash-at-start"], options=["--backoff-initial", "30", "--backoff-max", "30"])
    run.wait_for(lambda s: s["state"] == "restarting" and s["next_start_at"])
    started = time.monotonic()
    assert run.terminate(timeout=5) == 0
    assert time.monotonic() - started < 3
    assert run.state()["state"] == "stopped" and run.state()["restarts"] == 0


def test_grandchild_is_killed_with_the_crashed_child(supervise, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    run = supervise(["--spawn-grandchild", str(pidfile), "--exit-after", "1.0", "--exit-code", "0"],
                    options=["--backoff-initial", "5"])
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    try:
        run.wait_for(lambda s: s["state"] == "restarting")
        deadline = time.monotonic() + 5
        while not pid_gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_gone(grandchild)
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------- persisted history

def write_state(path: Path, crash_ages, restarts=7):
    now = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "state": "restarting", "pid": None, "restarts": restarts,
        "crashes": [{"at": now - age, "cause": "exited 1: RuntimeError: old", "exit": "exited 1"}
                    for age in crash_ages],
    }))


def test_recent_persisted_crashes_give_up_at_once(supervise, tmp_path):
    marker = tmp_path / "child-started"
    state_path = tmp_path / "state" / "replica-0.json"
    write_state(state_path, [30, 20, 10])
    run = supervise(options=["--crash-limit", "3"],
                    argv=[sys.executable, "-c", "open(%r, 'w')" % str(marker)])
    assert run.proc.wait(timeout=10) == GIVE_UP
    state = run.state()
    assert state["state"] == "failed" and state["restarts"] == 7
    assert state["last_cause"] == "crash loop: 3 crashes in 600 s; last: exited 1: RuntimeError: old"
    assert not marker.exists()


def test_old_persisted_crashes_are_ignored(supervise, tmp_path):
    write_state(tmp_path / "state" / "replica-0.json", [5000, 4000, 3000])
    run = supervise(options=["--crash-limit", "3"])
    state = run.wait_for(lambda s: s["state"] == "serving")
    assert state["crashes"] == [] and state["restarts"] == 7


def test_corrupt_state_file_starts_fresh(supervise, tmp_path):
    path = tmp_path / "state" / "replica-0.json"
    path.parent.mkdir()
    path.write_text("{not json")
    run = supervise()
    state = run.wait_for(lambda s: s["state"] == "serving")
    assert state["restarts"] == 0 and state["crashes"] == []
    assert "warning: ignoring unreadable state file" in run.stderr()
    assert oct(path.stat().st_mode & 0o777) == "0o644"


# ------------------------------------------------------------- usage and pure helpers

@pytest.mark.parametrize("args", [
    ["--state-file", "s.json", "--port", "8000"],
    ["--state-file", "s.json", "--port", "8000", "--"],
    ["--state-file", "s.json", "--port", "eighty", "--", "vllm"],
    ["--state-file", "s.json", "--port", "8000", "--health-interval", "0", "--", "vllm"],
    ["--port", "8000", "--", "vllm"],
])
def test_bad_usage_exits_2_with_one_line(args, tmp_path):
    result = subprocess.run([sys.executable, str(SUPERVISOR), *args], capture_output=True, text=True,
                            timeout=10, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("fm9g-supervisor: ")
    assert not (tmp_path / "s.json").exists()


def test_helpers():
    sup = load_supervisor_module()
    assert [sup.backoff_delay(k, 5, 60) for k in (1, 2, 3, 4, 5, 6)] == [5, 10, 20, 40, 60, 60]
    assert sup.describe_exit(0) == "exited 0 without being asked to stop"
    assert sup.describe_exit(0, asked_to_stop=True) == "exited 0"
    assert sup.describe_exit(1) == "exited 1"
    assert sup.describe_exit(-9) == "killed by SIGKILL" and sup.describe_exit(-4) == "killed by SIGILL"
    tail = ["INFO starting", "ValueError: early noise", "\x1b[31mERROR\x1b[0m EngineDeadError: engine gone",
            "INFO shutting down"]
    assert sup.crash_cause("exited 0 without being asked to stop", tail) == \
        "exited 0 without being asked to stop: ERROR EngineDeadError: engine gone"
    assert sup.crash_cause("exited 1", ["x", "RuntimeError: boom", "done"]) == "exited 1: RuntimeError: boom"
    assert sup.crash_cause("killed by SIGKILL", ["plain"]) == "killed by SIGKILL"
    assert len(sup.crash_cause("exited 1", ["CUDA error: " + "x" * 1000])) == 300
    now = 1000.0
    crashes = [{"at": now - age, "cause": "", "exit": ""} for age in (700, 500, 1)]
    assert [c["at"] for c in sup.prune(crashes, now, 600)] == [500.0, 999.0]
