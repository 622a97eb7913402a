#!/usr/bin/env python3
"""Supervise one vLLM OpenAI API server (one fm9g replica) and guarantee recovery.

Why this exists: when vLLM's engine process dies (kill -9 of EngineCore or a worker,
an OOM kill, SIGILL, a crash at start) the API server process often EXITS WITH STATUS 0,
so systemd's Restart=on-failure (and docker's on-failure policy) never restarts it.
In other cases the API server stays up but answers HTTP 503 on /health forever.

This supervisor runs vLLM as its child in a new session, treats every exit it did not
ask for as a crash (status 0 included), watches /health once the child has served,
kills the child's whole process group so orphaned engine workers free ports and GPU
memory, restarts with exponential backoff, and gives up (exit --give-up-exit-code)
on a crash loop. Its state (and crash history, which survives the supervisor being
restarted) lives in a small JSON file. Standard library only; Python 3.8+.

One replica over several hosts: every node's supervisor serves its state on --status-listen; the
head's (node rank 0) names the other nodes' with --peer, each other node's names the head's with
--head and runs its engine headless (no health URL). fm9g_replica_nodes.py keeps them in step: a
node that restarts restarts the head's engine, a head that restarts restarts its nodes', and such a
restart of a node's engine is the head's doing, not a crash of its own.

Usage: fm9g_replica_supervisor.py --state-file PATH --port PORT [options] -- VLLM_ARGV...
       fm9g_replica_supervisor.py --state-file PATH --head URL --status-listen ADDR:PORT ... -- ...
"""

import argparse
import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

PREFIX = "fm9g-supervisor: "
MAX_CRASHES_KEPT = 20
TAIL_LINES = 60
CAUSE_MAX = 300
WATCHDOG_KILL_WAIT = 10.0
TICK = 0.1
TELLING = re.compile(r"died unexpectedly|Illegal instruction|SIGILL|EngineDeadError|OutOfMemory"
                     r"|out of memory|CUDA error|Killed")
ERRORISH = re.compile(r"\b[A-Za-z_][\w.]*(Error|Exception)\b")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log(message):
    sys.stderr.write(PREFIX + message + "\n")
    sys.stderr.flush()


def node_link():
    """fm9g_replica_nodes.py, installed beside this file: only a replica over hosts needs it."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fm9g_replica_nodes

    return fm9g_replica_nodes


# ---------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        log("usage error: " + message)
        sys.exit(2)


def _number(kind, minimum, strict=False):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number: %r" % text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError("not a finite number: %r" % text)
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError("%r must be %s %s" % (text, ">" if strict else ">=", minimum))
        return value
    return convert


def parse_args(argv):
    if "--" not in argv:
        _Parser().error("expected '-- VLLM_ARGV...' after the options")
    split = argv.index("--")
    options, child_argv = argv[:split], argv[split + 1:]
    p = _Parser(prog="fm9g_replica_supervisor.py", allow_abbrev=False,
                description="Run vLLM as a child and restart it whenever it ends unasked.")
    p.add_argument("--state-file", required=True)
    p.add_argument("--port", type=_number(int, 1), help="the API server's port (not on a headless node)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--health-path", default="/health")
    p.add_argument("--health-interval", type=_number(float, 0, strict=True), default=5.0)
    p.add_argument("--health-failures", type=_number(int, 1), default=3)
    p.add_argument("--health-timeout", type=_number(float, 0, strict=True), default=10.0)
    p.add_argument("--backoff-initial", type=_number(float, 0), default=5.0)
    p.add_argument("--backoff-max", type=_number(float, 0), default=60.0)
    p.add_argument("--crash-limit", type=_number(int, 1), default=5)
    p.add_argument("--crash-window", type=_number(float, 0, strict=True), default=600.0)
    p.add_argument("--give-up-exit-code", type=_number(int, 0), default=3)
    p.add_argument("--stop-timeout", type=_number(float, 0), default=60.0)
    p.add_argument("--textfile", help="also write the state as Prometheus text here (node exporter's textfile "
                                      "collector): restarts, crash-loop failure, serving")
    p.add_argument("--replica", type=_number(int, 0), default=0, help="the replica label of --textfile's metrics")
    p.add_argument("--node-rank", type=_number(int, 0), default=0,
                   help="this node's rank in a replica over several hosts (0: the head)")
    p.add_argument("--status-listen", metavar="ADDR:PORT", help="serve this node's state as JSON on /status here")
    p.add_argument("--peer", action="append", default=[], metavar="URL",
                   help="the head: another node's /status URL (repeat, in node rank order)")
    p.add_argument("--head", metavar="URL", help="a headless node: the head's /status URL")
    opts = p.parse_args(options)
    if not child_argv:
        p.error("no vLLM command after '--'")
    if opts.head and opts.peer:
        p.error("--head (a headless node) and --peer (the head) exclude each other")
    if (opts.head or opts.peer) and not opts.status_listen:
        p.error("a node of a replica over hosts needs --status-listen")
    if bool(opts.head) != (opts.node_rank > 0):
        p.error("--head goes with a --node-rank above 0, and only there")
    if opts.port is None and not opts.head:
        p.error("--port is required (only a headless node, with --head, has none)")
    if opts.status_listen:
        try:
            node_link().parse_listen(opts.status_listen)
        except ValueError as exc:
            p.error("--status-listen: %s" % exc)
    if (opts.port or 1) > 65535 or opts.give_up_exit_code > 255:
        p.error("--port must be <= 65535 and --give-up-exit-code <= 255")
    return opts, child_argv


# ---------------------------------------------------------------- pure helpers

def backoff_delay(crashes_in_window, initial, maximum):
    return min(initial * 2 ** max(crashes_in_window - 1, 0), maximum)


def prune(crashes, now, window):
    return [c for c in crashes if now - c["at"] <= window][-MAX_CRASHES_KEPT:]


def describe_exit(returncode, asked_to_stop=False):
    if returncode < 0:
        try:
            return "killed by " + signal.Signals(-returncode).name
        except ValueError:
            return "killed by signal %d" % -returncode
    if returncode == 0 and not asked_to_stop:
        return "exited 0 without being asked to stop"
    return "exited %d" % returncode


def telling_line(lines):
    """The recent output line that best explains a crash, or None."""
    cleaned = [ANSI.sub("", line).strip() for line in lines]
    for pattern in (TELLING, ERRORISH):
        for line in reversed(cleaned):
            if line and pattern.search(line):
                return line
    return None


def crash_cause(exit_desc, lines):
    line = telling_line(lines)
    cause = exit_desc + ": " + line if line else exit_desc
    return cause[:CAUSE_MAX]


# ---------------------------------------------------------------- state file

def textfile_metrics(data, replica):
    """The state as Prometheus text: what the monitoring role's alerts and dashboard read."""
    label = '{replica="%d"}' % replica
    lines = [
        "# HELP fm9g_replica_restarts_total Engine restarts by the replica's supervisor.",
        "# TYPE fm9g_replica_restarts_total counter",
        "fm9g_replica_restarts_total%s %d" % (label, int(data.get("restarts") or 0)),
        "# HELP fm9g_replica_failed 1 when the supervisor gave up on a crash loop.",
        "# TYPE fm9g_replica_failed gauge",
        "fm9g_replica_failed%s %d" % (label, 1 if data.get("state") == "failed" else 0),
        "# HELP fm9g_replica_serving 1 while the engine has answered its health check since its last start.",
        "# TYPE fm9g_replica_serving gauge",
        "fm9g_replica_serving%s %d" % (label, 1 if data.get("state") == "serving" else 0),
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path, text, mode=0o644):
    """Readers (the node exporter, status) never see half a file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".supervisor-state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class StateFile:
    def __init__(self, path, textfile=None, replica=0):
        self.path = os.path.abspath(path)
        self.textfile = os.path.abspath(textfile) if textfile else None
        self.replica = replica
        self.data = self._load()

    def _load(self):
        fresh = {"state": "starting", "pid": None, "started_at": None, "serving_since": None,
                 "restarts": 0, "crashes": [], "last_cause": None, "last_exit": None,
                 "next_start_at": None}
        if not os.path.exists(self.path):
            return fresh
        try:
            with open(self.path) as f:
                old = json.load(f)
            crashes = [{"at": float(c["at"]), "cause": str(c.get("cause", "")), "exit": str(c.get("exit", ""))}
                       for c in old.get("crashes", [])]
            restarts = int(old.get("restarts", 0))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log("warning: ignoring unreadable state file %s (%s); starting fresh" % (self.path, exc))
            return fresh
        fresh.update(restarts=restarts, crashes=crashes,
                     last_cause=old.get("last_cause"), last_exit=old.get("last_exit"))
        return fresh

    def write(self, **changes):
        self.data.update(changes)
        self.data["supervisor_pid"] = os.getpid()
        self.data["updated_at"] = time.time()
        try:
            write_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")
            if self.textfile:
                write_atomically(self.textfile, textfile_metrics(self.data, self.replica))
        except OSError as exc:  # supervising matters more than bookkeeping
            log("warning: cannot write state file %s: %s" % (self.path, exc))


# ---------------------------------------------------------------- the child

class Child:
    """One vLLM process in its own session, its output copied through and its tail kept."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.tail = collections.deque(maxlen=TAIL_LINES)
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self):
        out = getattr(sys.stdout, "buffer", None)
        for raw in iter(self.proc.stdout.readline, b""):
            self.tail.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            try:
                if out is not None:
                    out.write(raw)
                    out.flush()
            except (OSError, ValueError):
                out = None  # our stdout is gone; keep the tail anyway

    def exited(self):
        """True once the child has ended; it stays unreaped (a zombie keeps its group id ours)."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except (ChildProcessError, AttributeError):
            return self.proc.poll() is not None

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.exited() and time.monotonic() < deadline:
            time.sleep(min(TICK, max(deadline - time.monotonic(), 0)))
        return self.exited()

    def signal(self, signum):
        if not self.exited():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def finish(self):
        """SIGKILL the whole process group (leftover engine workers), reap, return the status."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = self.proc.wait()
        self.reader.join(timeout=2)
        return returncode


def probe(url, timeout):
    """(healthy, description) of one GET of the health URL; proxies are never used."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200, "HTTP %d" % response.status
    except urllib.error.HTTPError as exc:
        return False, "HTTP %d" % exc.code
    except urllib.error.URLError as exc:
        return False, str(exc.reason)
    except Exception as exc:  # timeouts, resets, half-written responses
        return False, str(exc) or type(exc).__name__


# ---------------------------------------------------------------- the supervisor

class Supervisor:
    def __init__(self, opts, argv):
        self.opts = opts
        self.argv = argv
        self.state = StateFile(opts.state_file, opts.textfile, opts.replica)
        self.stop = threading.Event()
        self.stop_signal = None
        self.child = None
        self.url = "http://%s:%d%s" % (opts.host, opts.port, opts.health_path) if opts.port else None
        # A replica over hosts: the head watches its nodes, a node its head (fm9g_replica_nodes.py).
        nodes = node_link() if opts.status_listen else None
        self.view = nodes.HeadView(opts.peer, opts.health_failures, opts.health_timeout) if opts.peer else None
        self.link = nodes.NodeLink(opts.head, opts.health_failures, opts.health_timeout) if opts.head else None
        self.generation = None
        self.joined = None
        self.peer_cause = None
        self.status_server = None

    def snapshot(self):
        """What --status-listen serves: this node's state and engine generation."""
        data = self.state.data
        return {"node_rank": self.opts.node_rank, "state": data.get("state"), "generation": self.generation,
                "joined": self.joined, "last_cause": data.get("last_cause"), "restarts": data.get("restarts")}

    def request_stop(self, signum, _frame):
        self.stop_signal = signal.Signals(signum).name
        self.stop.set()

    def run(self):
        if self.opts.status_listen:
            self.status_server = node_link().StatusServer(self.opts.status_listen, self.snapshot).start()
        crashes = prune(self.state.data["crashes"], time.time(), self.opts.crash_window)
        self.state.data["crashes"] = crashes
        if len(crashes) >= self.opts.crash_limit:
            return self.give_up(crashes[-1]["cause"])
        first = True
        while not self.stop.is_set():
            if self.link and not self.wait_for_head():
                break
            if not first:
                self.state.data["restarts"] += 1
            first = False
            outcome = self.run_child()
            if outcome is None:
                break
            if self.peer_cause:  # the head's engine went: not this node's crash
                log("restarting with the head: " + self.peer_cause)
                self.state.write(state="restarting", last_cause=self.peer_cause, last_exit=outcome[1])
                self.peer_cause = None
                continue
            delay = self.record_crash(*outcome)
            if delay is None:
                return self.give_up(outcome[0])
            log("backing off %.1fs before restart" % delay)
            self.state.write(state="restarting", next_start_at=time.time() + delay)
            if self.stop.wait(delay):
                log("stopping (%s) during backoff" % self.stop_signal)
                break
        self.state.write(state="stopped", pid=None, started_at=None, serving_since=None, next_start_at=None)
        log("stopped")
        return 0

    def wait_for_head(self):
        """A headless node: wait for a head's engine to join; False when asked to stop first."""
        self.state.write(state="waiting", pid=None, started_at=None, serving_since=None, next_start_at=None)
        said = False
        while not self.stop.wait(0 if not said else self.opts.health_interval):
            generation = self.link.joinable(self.joined)
            if generation:
                self.joined = generation
                log("joining the head's engine %s" % generation)
                return True
            if not said:
                head = self.link.last
                log("waiting for the head's engine to start (head: %s)"
                    % ("unreachable" if head is None else head.get("state")))
                said = True
        return False

    def run_child(self):
        """Run one child to its end: None if we were asked to stop, else (cause, exit)."""
        try:
            child = Child(self.argv)
        except OSError as exc:
            return ("cannot start %s: %s" % (self.argv[0], exc))[:CAUSE_MAX], "not started"
        started_at = time.time()
        self.generation = "%d:%.3f" % (child.pid, started_at)  # fm9g_replica_nodes.generation_of
        if self.view:
            self.view.reset()
        self.state.write(state="starting", pid=child.pid, started_at=started_at, serving_since=None,
                         next_start_at=None, generation=self.generation, joined=self.joined)
        log("started pid %d: %s" % (child.pid, " ".join(self.argv)[:200]))
        self.child = child
        watchdog_cause = self.watch(child)
        if watchdog_cause is None and self.stop.is_set():
            self.stop_child(child)
            self.generation = None
            return None
        returncode = child.finish()
        # The head's engine ended by itself: say which node went with it (vLLM's engine dies with a lost
        # node before the next /status poll would tell). Still the head's crash: a node that keeps
        # failing makes the replica crash-loop, and the head gives up as for any engine.
        behind = self.node_behind_exit() if self.view and watchdog_cause is None else None
        self.generation = None
        self.state.write(pid=None, started_at=None, serving_since=None, generation=None)
        exit_desc = describe_exit(returncode, asked_to_stop=watchdog_cause is not None)
        cause = watchdog_cause or crash_cause(exit_desc, list(child.tail))
        if behind:
            cause = ("%s; the head's engine %s" % (behind, cause))[:CAUSE_MAX]
        return cause, exit_desc

    def node_behind_exit(self, tries=3):
        """The head's engine ended by itself: which node it ran with restarted or went, else None. A
        node's supervisor may take a moment to notice its engine is gone, so ask a few times."""
        for attempt in range(tries):
            cause = self.view.check(self.generation, True)
            if cause:
                return cause
            if attempt + 1 < tries and self.stop.wait(1.0):
                return None
        return None

    def watch(self, child):
        """Wait for the child to end or a stop; return the watchdog's cause if it killed the child."""
        if self.link:
            return self.watch_headless(child)
        failures, serving, next_probe = 0, False, time.monotonic() + self.opts.health_interval
        while not self.stop.wait(TICK) and not child.exited():
            if time.monotonic() < next_probe:
                continue
            healthy, desc = probe(self.url, self.opts.health_timeout)
            next_probe = time.monotonic() + self.opts.health_interval
            if self.view:
                cause = self.view.check(self.generation, serving or healthy)
                if cause:
                    return self.terminate(child, cause)
                healthy = healthy and self.view.all_joined()
            if healthy:
                failures = 0
                if not serving:
                    serving = True
                    log("serving: %s answered 200" % self.url)
                    self.state.write(state="serving", serving_since=time.time())
            elif serving and not child.exited():
                failures += 1
                if failures >= self.opts.health_failures:
                    cause = "engine dead: %s failed %d times (last: %s)" % (
                        self.opts.health_path, failures, desc)
                    return self.terminate(child, cause)
        return None

    def watch_headless(self, child):
        """A headless node: no health URL; in step with the head's engine it joined, else ended."""
        serving, next_check = False, time.monotonic() + self.opts.health_interval
        while not self.stop.wait(TICK) and not child.exited():
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + self.opts.health_interval
            cause, head_serving = self.link.check(self.joined)
            if cause:
                self.peer_cause = cause[:CAUSE_MAX]
                return self.terminate(child, cause)
            if head_serving and not serving:
                serving = True
                log("serving: the head's engine %s serves with this node" % self.joined)
                self.state.write(state="serving", serving_since=time.time())
        return None

    def terminate(self, child, cause):
        """End the child for ``cause`` (SIGTERM, then its whole group); the cause, for the record."""
        log(cause + "; terminating pid %d" % child.pid)
        child.signal(signal.SIGTERM)
        child.wait_exit(WATCHDOG_KILL_WAIT)
        return cause[:CAUSE_MAX]

    def record_crash(self, cause, exit_desc):
        """Persist a crash; return the backoff delay, or None when the crash limit is reached."""
        now = time.time()
        log("crash: " + cause)
        crashes = self.state.data["crashes"] + [{"at": now, "cause": cause, "exit": exit_desc}]
        crashes = prune(crashes, now, self.opts.crash_window)
        self.state.write(crashes=crashes, last_cause=cause, last_exit=exit_desc)
        if len(crashes) >= self.opts.crash_limit:
            return None
        return backoff_delay(len(crashes), self.opts.backoff_initial, self.opts.backoff_max)

    def give_up(self, last_cause):
        crashes = self.state.data["crashes"]
        cause = "crash loop: %d crashes in %g s; last: %s" % (len(crashes), self.opts.crash_window, last_cause)
        self.state.write(state="failed", pid=None, started_at=None, serving_since=None,
                         next_start_at=None, last_cause=cause)
        log("giving up: " + cause)
        return self.opts.give_up_exit_code

    def stop_child(self, child):
        """Forward SIGTERM to the child alone (vLLM drains and stops its engine), then reap its group."""
        log("stopping (%s): SIGTERM to pid %d, waiting up to %gs"
            % (self.stop_signal, child.pid, self.opts.stop_timeout))
        self.state.write(state="stopping", next_start_at=None)
        child.signal(signal.SIGTERM)
        if not child.wait_exit(self.opts.stop_timeout):
            log("pid %d still running after %gs; killing its process group" % (child.pid, self.opts.stop_timeout))
        returncode = child.finish()
        self.state.write(last_exit=describe_exit(returncode, asked_to_stop=True))

    def kill_leftovers(self):
        """Last resort on an unexpected error: never leave a vLLM process group behind."""
        if self.child is not None and self.child.proc.returncode is None:
            self.child.finish()


def main(argv=None):
    opts, child_argv = parse_args(sys.argv[1:] if argv is None else argv)
    supervisor = Supervisor(opts, child_argv)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        return supervisor.run()
    except BaseException:
        supervisor.kill_leftovers()
        raise


if __name__ == "__main__":
    sys.exit(main())
