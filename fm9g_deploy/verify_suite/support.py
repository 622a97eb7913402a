"""Helpers the checks share: root commands, the unit journal, listening sockets, one-line reasons."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass

import pytest

from fm9g_deploy.layout import VLLM_WORKER
from fm9g_deploy.replica_spec import serves_api

#: How much of a unit's journal a failed check attaches.
JOURNAL_LINES = 25
MAX_REASON = 300
#: ssh gets this long to connect (a loaded host answers slowly) and this many tries per command.
SSH_CONNECT_TIMEOUT = 30
SSH_ATTEMPTS = 3
#: ssh failures a retry cannot mend (a timeout or a reset under load can be).
SSH_FINAL = ("Connection refused", "Permission denied", "Could not resolve hostname", "No route to host")
#: Where Ansible keeps its SSH control sockets; the checks share them (one connection per host).
CONTROL_DIR = "~/.ansible/cp"


def share_ssh_connection(backend) -> None:
    """Make testinfra's ssh backend reuse one connection per host and retry a failed connect.

    With the project's ansible.cfg, testinfra passes ControlMaster=auto but no ControlPath, so
    every command would be a new SSH handshake. Every check is read-only: retrying is safe.
    """
    if getattr(backend, "NAME", "") == "ansible" and not backend.force_ansible:
        # testinfra's ansible backend runs commands through a cached ssh (or local) host.
        inner = backend.ansible_runner.get_host(backend.host, ssh_config=backend.ssh_config,
                                                ssh_identity_file=backend.ssh_identity_file)
        backend = inner.backend if inner is not None else backend
    if getattr(backend, "NAME", "") not in ("ssh", "safe-ssh"):
        return
    backend.timeout = max(backend.timeout, SSH_CONNECT_TIMEOUT)
    if not backend.controlpath:
        folder = os.path.expanduser(CONTROL_DIR)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        # testinfra %-formats the ssh command line: ssh's own %C (a hash of the target) is escaped.
        backend.controlpath = os.path.join(folder, "fm9g-%C").replace("%", "%%")
    run_once = backend.run

    def run(command, *args, **kwargs):
        for attempt in range(1, SSH_ATTEMPTS + 1):
            try:
                return run_once(command, *args, **kwargs)
            except RuntimeError as exc:  # ssh itself failed (exit 255)
                stderr = str(getattr(exc.args[0], "stderr", "")) if exc.args else ""
                if attempt == SSH_ATTEMPTS or any(word in stderr for word in SSH_FINAL):
                    raise
                time.sleep(2 * attempt)

    backend.run = run


def fail(reason: str) -> None:
    """Fail the check with ``reason`` as its whole report (one line, no traceback)."""
    pytest.fail(reason, pytrace=False)


def expect(condition: object, reason: str) -> None:
    if not condition:
        fail(reason)


def one_line(text: str, limit: int = MAX_REASON) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


#: Shorter keys are no secret worth hiding (the guide's is "fm9g") and hiding them would mangle
#: every unit and path name that contains them.
MIN_REDACTED = 8


def redact(text: str, secret: str) -> str:
    """``text`` with ``secret`` masked where it stands as a whole word."""
    if len(secret) < MIN_REDACTED:
        return text
    return re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "***", text)


_ROOT_CACHE: dict[int, bool] = {}


@contextlib.contextmanager
def as_root(host):
    """Run the block's commands as root: through sudo unless the SSH user is root already."""
    key = id(host)
    if key not in _ROOT_CACHE:
        _ROOT_CACHE[key] = host.run("id -u").stdout.strip() == "0"
    if _ROOT_CACHE[key]:
        yield host
    else:
        with host.sudo():
            yield host


def journal(host, unit: str, lines: int = JOURNAL_LINES) -> str:
    with as_root(host):
        result = host.run("journalctl -u %s -n %s --no-pager -o short-iso", unit, str(lines))
    return result.stdout if result.rc == 0 else f"(journalctl failed: {last_line(result.stderr)})"


@dataclass(frozen=True)
class ListeningSocket:
    address: str
    port: int
    #: The owner's cgroup (ss -e) and process ids (ss -p), where the host's ss reports them.
    cgroup: str
    pids: frozenset[int]

    @property
    def loopback(self) -> bool:
        address = self.address.split("%", 1)[0]
        if address.startswith("::ffff:"):
            address = address[len("::ffff:"):]
        try:
            return ipaddress.ip_address(address).is_loopback
        except ValueError:  # "*" and the like: every address
            return False

    def __str__(self) -> str:
        return f"{self.address}:{self.port}" if ":" not in self.address else f"[{self.address}]:{self.port}"


_PID = re.compile(r"pid=(\d+)")
_CGROUP = re.compile(r"cgroup:(\S+)")


def listening_tcp(host) -> list[ListeningSocket]:
    """Every listening TCP socket on the host (``ss -ltnHep``, as root to see every owner)."""
    with as_root(host):
        result = host.run("ss -ltnHep")
    if result.rc != 0:
        fail(f"`ss -ltnHep` failed on the host ({last_line(result.stderr) or result.rc}); install iproute2")
    sockets = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5 or ":" not in fields[3]:
            continue
        address, _, port = fields[3].rpartition(":")
        cgroup = _CGROUP.search(line)
        sockets.append(ListeningSocket(address=address.strip("[]"), port=int(port),
                                       cgroup=cgroup.group(1) if cgroup else "",
                                       pids=frozenset(int(pid) for pid in _PID.findall(line))))
    return sockets


def unit_pids(host, unit: str) -> set[int]:
    """Process ids in the unit's cgroup (cgroup v2 or v1's systemd hierarchy)."""
    group = host.run("systemctl show -p ControlGroup --value %s", unit).stdout.strip()
    if not group:
        return set()
    result = host.run("cat /sys/fs/cgroup%s/cgroup.procs /sys/fs/cgroup/systemd%s/cgroup.procs 2>/dev/null || true",
                      group, group)
    return {int(word) for word in result.stdout.split() if word.isdigit()}


def describe_state(active: str, sub: str) -> str:
    """"inactive (dead)"; something readable when systemctl said nothing (no systemd there)."""
    return f"{active} ({sub})" if active else "in no state systemctl could report"


def unit_property(host, unit: str, name: str) -> str:
    return host.run("systemctl show -p %s --value %s", name, unit).stdout.strip()


#: The module the replica units run (fm9g_deploy/replica_spec.py).
API_SERVER = "vllm.entrypoints.openai.api_server"


def processes(host, pids=None) -> dict[int, tuple[int | None, str]]:
    """pid -> (parent pid, command line with its arguments joined by spaces), read from /proc as root.

    Only the processes ``pids`` when given, else every process; one that ends meanwhile is left out.
    """
    where = " ".join(f"/proc/{int(pid)}" for pid in sorted(pids)) if pids is not None else "/proc/[0-9]*"
    if not where:
        return {}
    with as_root(host):
        result = host.run(
            f'for p in {where}; do [ -r "$p/cmdline" ] || continue; '
            'printf "%s %s " "${p#/proc/}" "$(sed -n "s/^PPid:[[:space:]]*//p" "$p/status" 2>/dev/null)"; '
            'tr "\\0" " " < "$p/cmdline" 2>/dev/null; echo; done')
    table = {}
    for line in result.stdout.splitlines():
        pid, _, rest = line.partition(" ")
        parent, _, command = rest.partition(" ")
        if pid.isdigit():
            table[int(pid)] = (int(parent) if parent.isdigit() else None, command.strip())
    return table


def process_environment(host, pid: int, names) -> tuple[dict[str, str] | None, str]:
    """(the variables ``names`` in process ``pid``'s environment, why it could not be read or "").

    Read from /proc/PID/environ as root and filtered on the host: the rest of the environment
    (it holds secrets such as the API key) never leaves it. A name that is unset is absent.
    """
    wanted = "^(" + "|".join(re.escape(name) for name in names) + ")="
    with as_root(host):
        result = host.run("tr '\\0' '\\n' < /proc/%s/environ > /dev/null && "
                          "{ tr '\\0' '\\n' < /proc/%s/environ | grep -E %s || true; }", str(pid), str(pid), wanted)
    if result.rc != 0:
        return None, last_line(result.stderr) or f"exit {result.rc}"
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        found.setdefault(name, value)  # the first one is what getenv() answers
    return found, ""


def runs_api_server(command: str, port: int | None = None) -> bool:
    """Whether ``command`` (argv joined by spaces) is Python running vLLM's API server (on ``port``).

    Only as the program itself (``python [-opts] -m vllm...api_server``): the replica supervisor's
    command line names the module too, after its own script and ``--``.
    """
    words = command.split()
    if API_SERVER not in words[2:]:
        return False
    at = words.index(API_SERVER)
    if words[at - 1] != "-m" or not all(word.startswith("-") for word in words[1:at]):
        return False
    return port is None or re.search(rf"(?:^|\s)--port(?:=|\s+){port}(?:\s|$)", " ".join(words[at:])) is not None


def node_status(host, url: str) -> tuple[dict | None, str]:
    """A node supervisor's /status (JSON), read on ``host`` (the nodes' network may be reachable from
    the hosts only), or (None, why not)."""
    script = ("import json,sys,urllib.request as u;"
              "o=u.build_opener(u.ProxyHandler({}));"
              "print(o.open(sys.argv[1],timeout=5).read().decode())")
    result = host.run("python3 -c %s %s", script, url)
    if result.rc != 0:
        return None, last_line(result.stderr) or f"exit {result.rc}"
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return None, "not JSON"
    return (data, "") if isinstance(data, dict) else (None, "not a status object")


def main_process(table: dict[int, tuple[int | None, str]], pids) -> int:
    """Of the processes ``pids`` (all holding the replica's socket, or all running its API server), the
    API server itself: not a child of another of them (an engine process vLLM forked inherits the
    socket and the command line), preferably with the API server's command line; the oldest pid else."""
    pids = set(pids)
    roots = [pid for pid in pids if table.get(pid, (None, ""))[0] not in pids]
    servers = [pid for pid in roots if runs_api_server(table.get(pid, (None, ""))[1])]
    return min(servers or roots or pids)


def replica_process(host, replica) -> int:
    """The pid of the process that listens on the replica's port (``ss``; /proc where ss names no owner);
    a headless node's: the node launcher the supervisor runs (it listens on no fixed port)."""
    port, index = replica["port"], replica["index"]
    if not serves_api(replica):  # a headless node of a replica over hosts
        table = processes(host)
        rank = replica["node"]["rank"]
        workers = [pid for pid, (_, command) in table.items()
                   if command.split()[1:2] == [VLLM_WORKER] and f"--node-rank {rank}" in command]
        expect(workers, f"no {VLLM_WORKER} --node-rank {rank} runs: is node rank {rank} of replica {index} running?")
        return main_process(table, workers)
    # A host without iproute2 (a bare GPU box): the API server's command line names its port.
    sockets = [s for s in listening_tcp(host) if s.port == port] if host.exists("ss") else None
    expect(sockets is None or sockets, f"no process listens on port {port}: is replica {index} running?")
    owners = frozenset().union(*(s.pids for s in sockets or ()))
    if owners:
        return main_process(processes(host, owners), owners)
    # ss names no owner (a process in another PID namespace, an ss without -p): look for the server.
    table = processes(host)
    servers = [pid for pid, (_, command) in table.items() if runs_api_server(command, port)]
    expect(servers, f"port {port} is open but ss names no process there and no {API_SERVER} --port {port} "
           f"runs: is replica {index} running?")
    return main_process(table, servers)
