#!/usr/bin/env python3
"""Active readiness checks for the FM9G gateway's nginx upstream.

Why this exists: open-source nginx only has passive health checks, so a replica whose engine died
(vLLM then answers 503 on /health) or that refuses connections stays in rotation until client
requests fail on it. This program probes every backend's health endpoint, marks a backend that
failed `fall` consecutive probes `down` until it passes `rise` consecutive probes, and renders
/etc/nginx/fm9g/upstream.conf from the desired state Ansible writes (backends.json), reloading
nginx when the rendered text changes.

It runs as a daemon (one round every interval_s) and, with --once, as a single synchronous round
that Ansible's rolling update calls to take a replica out of / put it back into rotation. Both
serialize on a lock file and share their health memory through a small JSON state file.

Standard library only; Python 3.8+.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

PROG = "fm9g-gateway-health"
DEFAULT_DESIRED = "/etc/nginx/fm9g/backends.json"
DEFAULT_OUTPUT = "/etc/nginx/fm9g/upstream.conf"
DEFAULT_STATE = "/run/fm9g-gateway-health.json"
PLACEHOLDER_SERVER = "127.0.0.1:9"
COMMAND_TIMEOUT_S = 60
BACKEND_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
UPSTREAM_RE = re.compile(r"^[A-Za-z0-9_]+$")
PATH_RE = re.compile(r"^/[\x21-\x7e]*$")
DEFAULTS = {
    "upstream": "fm9g_backends", "draining": [], "health_path": "/health", "interval_s": 2,
    "timeout_s": 2, "fall": 2, "rise": 2, "max_fails": 1, "fail_timeout_s": 5, "keepalive": 32,
}


class DesiredStateError(Exception):
    """The desired-state file is missing or malformed (exit 2)."""


class ApplyError(Exception):
    """nginx rejected the new file, or the reload failed (exit 1)."""


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- desired state ---------------------------------------------------------------------------

def load_desired(path: str) -> dict:
    """Read and validate the desired state; raise DesiredStateError with a one-line reason."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise DesiredStateError(f"desired-state file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise DesiredStateError(f"cannot read desired-state file {path}: {one_line(str(exc))}") from None
    if not isinstance(raw, dict):
        raise DesiredStateError(f"{path}: expected a JSON object")
    if "backends" not in raw:
        raise DesiredStateError(f"{path}: missing 'backends'")
    desired = dict(DEFAULTS)
    desired.update(raw)
    try:
        validate_desired(desired)
    except DesiredStateError as exc:
        raise DesiredStateError(f"{path}: {exc}") from None
    desired["backends"] = list(dict.fromkeys(desired["backends"]))  # drop duplicates, keep order
    return desired


def validate_desired(desired: dict) -> None:
    if not isinstance(desired["upstream"], str) or not UPSTREAM_RE.match(desired["upstream"]):
        raise DesiredStateError("'upstream' must be a name of letters, digits and underscores")
    for key in ("backends", "draining"):
        value = desired[key]
        if not isinstance(value, list) or not all(isinstance(b, str) and BACKEND_RE.match(b) for b in value):
            raise DesiredStateError(f"'{key}' must be a list of \"host:port\" strings")
    if not isinstance(desired["health_path"], str) or not PATH_RE.match(desired["health_path"]):
        raise DesiredStateError("'health_path' must be a path starting with '/'")
    for key, minimum, kinds in (("interval_s", 0, (int, float)), ("timeout_s", 0, (int, float)),
                                ("fall", 1, (int,)), ("rise", 1, (int,)), ("max_fails", 0, (int,)),
                                ("fail_timeout_s", 0, (int,)), ("keepalive", 0, (int,))):
        value = desired[key]
        strictly = key in ("interval_s", "timeout_s")
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum or (strictly and value <= 0):
            kind = "a positive number" if strictly else f"an integer >= {minimum}"
            raise DesiredStateError(f"'{key}' must be {kind}")


# --- health memory ---------------------------------------------------------------------------

def load_health(path: str) -> dict:
    """The persisted health memory; a missing or unreadable file means 'nothing probed yet'."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        if isinstance(state, dict) and isinstance(state.get("backends"), dict):
            return state
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log(f"ignoring unreadable state file {path}: {one_line(str(exc))}")
    return {"backends": {}, "fail_open": False}


def new_entry() -> dict:
    # Never probed: healthy, so a fresh config does not start with everything down.
    return {"up": True, "fails": 0, "passes": 0, "reason": ""}


def update_entry(backend: str, entry: dict, ok: bool, reason: str, fall: int, rise: int) -> None:
    """Apply one probe result to a backend's fall/rise memory; log a change of up/down."""
    cap = max(fall, rise)
    if ok:
        entry["fails"], entry["passes"], entry["reason"] = 0, min(entry["passes"] + 1, cap), ""
        if not entry["up"] and entry["passes"] >= rise:
            entry["up"] = True
            log(f"{backend} back in rotation")
    else:
        entry["passes"], entry["fails"], entry["reason"] = 0, min(entry["fails"] + 1, cap), reason
        if entry["up"] and entry["fails"] >= fall:
            entry["up"] = False
            log(f"{backend} out of rotation: {reason} ({entry['fails']} failed probes)")


def update_health(health: dict, desired: dict, results: Dict[str, Tuple[bool, str]]) -> None:
    """Fold a probe round into the memory. Draining and removed backends are forgotten: the
    operator owns them, and one that comes back starts fresh (healthy) like a new backend."""
    old = health["backends"]
    entries = {}
    for backend in desired["backends"]:
        if backend in desired["draining"]:
            continue
        entry = old.get(backend)
        if not isinstance(entry, dict) or set(entry) != set(new_entry()):
            entry = new_entry()
        if backend in results:
            ok, reason = results[backend]
            update_entry(backend, entry, ok, reason, desired["fall"], desired["rise"])
        entries[backend] = entry
    health["backends"] = entries


def unhealthy_set(health: dict, desired: dict) -> set:
    """Backends to mark down for health reasons, failing open when none would remain."""
    active = [b for b in desired["backends"] if b not in desired["draining"]]
    down = {b for b in active if not health["backends"].get(b, new_entry())["up"]}
    fail_open = bool(active) and down == set(active)
    if fail_open != health.get("fail_open", False):
        if fail_open:
            log("every backend is failing its health check: keeping them in rotation (fail open)")
        else:
            log("fail open over: at least one backend is healthy")
        health["fail_open"] = fail_open
    return set() if fail_open else down


def save_health(path: str, health: dict) -> None:
    write_atomically(path, json.dumps(health, indent=1, sort_keys=True) + "\n", mode=0o600)


# --- probing ---------------------------------------------------------------------------------

def probe(backend: str, path: str, timeout_s: float) -> Tuple[bool, str]:
    """GET http://backend/path; healthy iff HTTP 200. Returns (ok, reason for a failure)."""
    conn = http.client.HTTPConnection(backend, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": PROG, "Connection": "close"})
        response = conn.getresponse()
        response.read(65536)
        if response.status == 200:
            return True, ""
        return False, f"HTTP {response.status}"
    except ConnectionRefusedError:
        return False, "connection refused"
    except socket.timeout:
        return False, f"timed out after {timeout_s:g}s"
    except (OSError, http.client.HTTPException) as exc:
        return False, one_line(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def probe_all(backends: List[str], path: str, timeout_s: float) -> Dict[str, Tuple[bool, str]]:
    """Probe concurrently; a probe not finished within timeout_s (+ a little) counts as failed."""
    results: Dict[str, Tuple[bool, str]] = {}

    def worker(backend: str) -> None:
        results[backend] = probe(backend, path, timeout_s)

    threads = [threading.Thread(target=worker, args=(b,), daemon=True) for b in backends]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {b: results.get(b, (False, f"timed out after {timeout_s:g}s")) for b in backends}


# --- rendering and applying ------------------------------------------------------------------

def render(desired: dict, unhealthy: set, source_name: str) -> str:
    lines = [f"# Managed by {PROG} from {source_name}; do not edit.",
             f"upstream {desired['upstream']} {{", "    least_conn;"]
    for backend in desired["backends"]:
        server = f"    server {backend} max_fails={desired['max_fails']} fail_timeout={desired['fail_timeout_s']}s"
        if backend in desired["draining"]:
            server += " down;   # draining"
        elif backend in unhealthy:
            server += " down;   # unhealthy"
        else:
            server += ";"
        lines.append(server)
    if not desired["backends"]:
        lines.append(f"    server {PLACEHOLDER_SERVER} down;   # placeholder: no backends")
    if desired["keepalive"] > 0:
        lines.append(f"    keepalive {desired['keepalive']};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_command(argv: List[str]) -> Tuple[bool, str]:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, one_line(str(exc))
    return done.returncode == 0, one_line(done.stdout) or f"exit status {done.returncode}"


def default_reload() -> Optional[List[str]]:
    """The reload command for this host, or None when nginx is not running (it reads the file at start)."""
    if os.path.isdir("/run/systemd/system"):
        active = run_command(["systemctl", "is-active", "--quiet", "nginx"])[0]
        return ["systemctl", "reload", "nginx"] if active else None
    for path in ("/run/nginx.pid", "/var/run/nginx.pid"):
        if _live_pid(path):
            return ["nginx", "-s", "reload"]
    return None


def _live_pid(path: str) -> bool:
    """Whether ``path`` names a running process (a stopped nginx may leave it empty)."""
    try:
        with open(path, encoding="utf-8") as handle:
            os.kill(int(handle.read().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def apply(output: str, text: str, test_cmd: List[str], reload_cmd: Optional[List[str]]) -> bool:
    """Write `text` if it differs, check it with nginx -t and reload. Returns whether it changed.
    On a failed check the previous file is put back and ApplyError raised."""
    previous = read_text(output)
    if previous == text:
        return False
    write_atomically(output, text)
    ok, detail = run_command(test_cmd)
    if not ok:
        restore(output, previous)
        raise ApplyError(f"nginx rejected the new {output}, previous file kept: {detail}")
    command = reload_cmd if reload_cmd is not None else default_reload()
    if command is None:
        log(f"wrote {output}; nginx is not running, nothing to reload")
        return True
    ok, detail = run_command(command)
    if not ok:
        # Put the old file back so that the next round tries again (the file mirrors what nginx runs).
        restore(output, previous)
        raise ApplyError(f"reloading nginx failed ({shlex.join(command)}), previous file kept: {detail}")
    log(f"wrote {output} and reloaded nginx")
    return True


def restore(output: str, previous: Optional[str]) -> None:
    if previous is None:
        try:
            os.unlink(output)
        except FileNotFoundError:
            pass
    else:
        write_atomically(output, previous)


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


# --- one round, the two modes ----------------------------------------------------------------

class Locked:
    """An exclusive flock on the lock file, so --once and the daemon never interleave."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()


def run_round(args: argparse.Namespace) -> Tuple[bool, dict]:
    """Read, probe, render, apply, under the lock. Returns (changed, desired state)."""
    with Locked(args.lock_file):
        desired = load_desired(args.desired)
        health = load_health(args.state_file)
        active = [b for b in desired["backends"] if b not in desired["draining"]]
        results = probe_all(active, desired["health_path"], desired["timeout_s"])
        update_health(health, desired, results)
        unhealthy = unhealthy_set(health, desired)
        save_health(args.state_file, health)
        text = render(desired, unhealthy, os.path.basename(args.desired))
        return apply(args.output, text, args.nginx_test_cmd, args.reload_cmd), desired


def run_once(args: argparse.Namespace) -> int:
    try:
        changed, _ = run_round(args)
    except DesiredStateError as exc:
        log(str(exc))
        return 2
    except ApplyError as exc:
        log(str(exc))
        return 1
    print("changed" if changed else "unchanged", flush=True)
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    last_error = None
    interval = DEFAULTS["interval_s"]
    log(f"watching {args.desired}, writing {args.output}")
    while not stop.is_set():
        try:
            _, desired = run_round(args)
            interval, last_error = desired["interval_s"], None
        except (DesiredStateError, ApplyError, OSError) as exc:
            message = one_line(str(exc))
            if message != last_error:  # one line per new error, not one per round
                log(message)
            last_error = message
        stop.wait(interval)
    log("stopped")
    return 0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--desired", default=DEFAULT_DESIRED, help="desired-state JSON (default %(default)s)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="upstream file to render (default %(default)s)")
    parser.add_argument("--state-file", default=DEFAULT_STATE, help="health memory (default %(default)s)")
    parser.add_argument("--lock-file", help="lock file (default: OUTPUT.lock)")
    parser.add_argument("--once", action="store_true", help="one probe round, apply, then exit")
    parser.add_argument("--reload-cmd", type=shlex.split,
                        help="command that reloads nginx (default: systemctl reload nginx, or nginx -s reload)")
    parser.add_argument("--nginx-test-cmd", type=shlex.split, default=shlex.split("nginx -t -q"),
                        help="command that checks the configuration (default: nginx -t -q)")
    args = parser.parse_args(argv)
    if args.lock_file is None:
        args.lock_file = args.output + ".lock"
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_once(args) if args.once else run_daemon(args)


if __name__ == "__main__":
    sys.exit(main())
