"""fm9g_gateway_health.py: active readiness checks rendering nginx's upstream, against real local HTTP backends."""

from __future__ import annotations

import fcntl
import json
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "roles" / "fm9g_gateway" / "files" / "fm9g_gateway_health.py"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        status = self.server.health_status if self.path == "/health" else 404
        body = b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Backend:
    """A stand-in replica whose /health answers `status` (switchable between 200 and 503)."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.health_status = 200
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def set_status(self, status: int) -> None:
        self.server.health_status = status

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends():
    made = []

    def make(count=1):
        new = [Backend() for _ in range(count)]
        made.extend(new)
        return new if count > 1 else new[0]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def dead_address():
    """A local port with nothing listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


class Gateway:
    """The files one gateway host would have, in tmp_path, and a way to run one --once round."""

    def __init__(self, tmp_path: Path):
        self.desired = tmp_path / "backends.json"
        self.output = tmp_path / "upstream.conf"
        self.state = tmp_path / "health-state.json"
        self.reloads_file = tmp_path / "reloads"
        self.reload_cmd = f"sh -c {shlex.quote(f'echo reload >> {self.reloads_file}')}"

    def write_desired(self, backends, draining=(), **overrides):
        desired = {"upstream": "fm9g_backends", "backends": list(backends), "draining": list(draining),
                   "health_path": "/health", "interval_s": 2, "timeout_s": 1, "fall": 2, "rise": 2,
                   "max_fails": 1, "fail_timeout_s": 5, "keepalive": 32}
        desired.update(overrides)
        self.desired.write_text(json.dumps(desired))

    def args(self, *extra, test_cmd="true"):
        return [sys.executable, str(SCRIPT), "--desired", str(self.desired), "--output", str(self.output),
                "--state-file", str(self.state), "--reload-cmd", self.reload_cmd, "--nginx-test-cmd", test_cmd,
                *extra]

    def once(self, test_cmd="true") -> subprocess.CompletedProcess:
        return subprocess.run(self.args("--once", test_cmd=test_cmd), capture_output=True, text=True, timeout=20)

    @property
    def reloads(self) -> int:
        return len(self.reloads_file.read_text().splitlines()) if self.reloads_file.exists() else 0

    def line_of(self, backend: str) -> str:
        [line] = [line for line in self.output.read_text().splitlines() if f"server {backend} " in line]
        return line


@pytest.fixture
def gateway(tmp_path):
    return Gateway(tmp_path)


def is_down(gateway: Gateway, backend: str) -> bool:
    return " down;" in gateway.line_of(backend)


def test_renders_servers_draining_and_keepalive(gateway, backends):
    first, second = backends(2)
    gateway.write_desired([first.address, second.address], draining=[second.address])

    done = gateway.once()

    assert done.returncode == 0, done.stderr
    assert done.stdout == "changed\n"
    assert gateway.output.read_text() == (
        "# Managed by fm9g-gateway-health from backends.json; do not edit.\n"
        "upstream fm9g_backends {\n"
        "    least_conn;\n"
        f"    server {first.address} max_fails=1 fail_timeout=5s;\n"
        f"    server {second.address} max_fails=1 fail_timeout=5s down;   # draining\n"
        "    keepalive 32;\n"
        "}\n"
    )
    assert gateway.reloads == 1


def test_empty_backend_list_renders_a_placeholder(gateway):
    gateway.write_desired([])

    done = gateway.once()

    assert done.returncode == 0, done.stderr
    text = gateway.output.read_text()
    assert "    server 127.0.0.1:9 down;" in text
    assert text.count("server ") == 1 and "keepalive 32;" in text


def test_503_leaves_after_fall_rounds_and_returns_after_rise_rounds(gateway, backends):
    healthy, flaky = backends(2)
    gateway.write_desired([healthy.address, flaky.address], fall=2, rise=2)
    assert gateway.once().returncode == 0 and not is_down(gateway, flaky.address)

    flaky.set_status(503)
    first_failure = gateway.once()
    assert first_failure.stdout == "unchanged\n" and not is_down(gateway, flaky.address)
    second_failure = gateway.once()
    assert second_failure.stdout == "changed\n" and is_down(gateway, flaky.address)
    assert gateway.line_of(flaky.address).endswith("down;   # unhealthy")
    assert f"fm9g-gateway-health: {flaky.address} out of rotation: HTTP 503 (2 failed probes)" in second_failure.stderr
    assert not is_down(gateway, healthy.address)

    flaky.set_status(200)
    first_pass = gateway.once()
    assert first_pass.stdout == "unchanged\n" and is_down(gateway, flaky.address)
    second_pass = gateway.once()
    assert second_pass.stdout == "changed\n" and not is_down(gateway, flaky.address)
    assert f"fm9g-gateway-health: {flaky.address} back in rotation" in second_pass.stderr
    assert gateway.reloads == 3


def test_refused_connection_counts_as_a_failure(gateway, backends, dead_address):
    healthy = backends()
    gateway.write_desired([healthy.address, dead_address], fall=1)

    done = gateway.once()

    assert done.returncode == 0, done.stderr
    assert is_down(gateway, dead_address) and not is_down(gateway, healthy.address)
    assert f"{dead_address} out of rotation: connection refused (1 failed probes)" in done.stderr


def test_fails_open_when_every_backend_is_unhealthy(gateway, backends, dead_address):
    sick, drained = backends(2)
    sick.set_status(503)
    gateway.write_desired([sick.address, dead_address, drained.address], draining=[drained.address], fall=1)

    done = gateway.once()

    assert done.returncode == 0, done.stderr
    assert not is_down(gateway, sick.address) and not is_down(gateway, dead_address)
    assert is_down(gateway, drained.address)
    assert "fail open" in done.stderr

    # One recovers: the other one now leaves the rotation.
    sick.set_status(200)
    gateway.write_desired([sick.address, dead_address, drained.address], draining=[drained.address], fall=1, rise=1)
    done = gateway.once()
    assert not is_down(gateway, sick.address) and is_down(gateway, dead_address)


def test_all_draining_stays_down(gateway, backends):
    first, second = backends(2)
    gateway.write_desired([first.address, second.address], draining=[first.address, second.address])

    done = gateway.once()

    assert done.returncode == 0, done.stderr
    assert is_down(gateway, first.address) and is_down(gateway, second.address)


def test_nothing_changed_means_no_rewrite_and_no_reload(gateway, backends):
    first, second = backends(2)
    gateway.write_desired([first.address, second.address])
    assert gateway.once().stdout == "changed\n"
    before = gateway.output.stat()

    again = gateway.once()

    assert again.returncode == 0 and again.stdout == "unchanged\n"
    after = gateway.output.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert gateway.reloads == 1


def test_failed_nginx_check_restores_the_previous_file(gateway, backends):
    first, second = backends(2)
    gateway.write_desired([first.address, second.address])
    assert gateway.once().returncode == 0
    previous = gateway.output.read_text()

    gateway.write_desired([first.address, second.address], draining=[second.address])
    done = gateway.once(test_cmd="false")

    assert done.returncode == 1
    assert "nginx rejected" in done.stderr
    assert gateway.output.read_text() == previous
    assert gateway.reloads == 1
    # Once nginx accepts it, the change goes through.
    assert gateway.once().stdout == "changed\n" and is_down(gateway, second.address)


def test_failed_nginx_check_without_a_previous_file_leaves_none(gateway, backends):
    gateway.write_desired([backends().address])

    done = gateway.once(test_cmd="false")

    assert done.returncode == 1 and not gateway.output.exists()


@pytest.mark.parametrize("content", [
    None,
    "{not json",
    json.dumps({"upstream": "fm9g_backends"}),
    json.dumps({"backends": "127.0.0.1:8100"}),
    json.dumps({"backends": ["127.0.0.1:8100; evil"]}),
    json.dumps({"backends": [], "fall": 0}),
])
def test_bad_desired_state_exits_2_with_one_line(gateway, content):
    if content is not None:
        gateway.desired.write_text(content)

    done = gateway.once()

    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("fm9g-gateway-health: ")
    assert not gateway.output.exists() and gateway.reloads == 0


def test_once_waits_for_the_lock(gateway, backends):
    gateway.write_desired([backends().address])
    lock_path = Path(str(gateway.output) + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        process = subprocess.Popen(gateway.args("--once"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            assert process.poll() is None and not gateway.output.exists()
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            stdout, _ = process.communicate(timeout=10)
            assert process.returncode == 0 and stdout == "changed\n"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_daemon_takes_a_failing_backend_out_and_stops_on_sigterm(gateway, backends):
    healthy, flaky = backends(2)
    gateway.write_desired([healthy.address, flaky.address], interval_s=0.2, timeout_s=0.5, fall=2, rise=2)
    process = subprocess.Popen(gateway.args(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: gateway.output.exists() and not is_down(gateway, flaky.address), seconds=5)
        flaky.set_status(503)
        wait_for(lambda: is_down(gateway, flaky.address), seconds=5)
        assert not is_down(gateway, healthy.address)

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=5)
        assert process.returncode == 0, stderr
        assert f"{flaky.address} out of rotation: HTTP 503" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {seconds}s")
