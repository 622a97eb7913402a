"""fm9g_replica_nodes.py and the supervisor's multi-node mode: the nodes of one replica over hosts
stay in step, because vLLM's multi-node launcher does not (a head keeps answering /health over a dead
node until a request finds its engine dead; a node whose head died waits forever).

The views are checked against scripted statuses; then real supervisors run end to end around
tests/doubles/fake_vllm_server.py (the head's engine) and a sleeping process (a node's engine):
TEST DOUBLES of vLLM, whose multi-node engine cannot run here in a unit test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_file_module
from tests.unit.test_replica_supervisor import FAKE, FAST, SUPERVISOR, free_port, kill_group

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "roles" / "fm9g_replica" / "files" / "fm9g_replica_nodes.py"


nodes = load_file_module(NODES)


class Scripted:
    """fetch_status answering from a dict url -> status (None: unreachable)."""

    def __init__(self, answers):
        self.answers = answers

    def __call__(self, url, timeout):
        status = self.answers.get(url)
        return (None, "connection refused") if status is None else (dict(status), None)


# -- the head's view -----------------------------------------------------------------------------

def head_view(answers, failures=3):
    return nodes.HeadView(["http://n1:9/status", "http://n2:9/status"], failures, 1, fetch=Scripted(answers))


def test_the_head_serves_only_once_every_node_joined_and_restarts_when_one_restarts():
    answers = {"http://n1:9/status": {"state": "starting", "generation": "11:1.0", "joined": "7:0.5"},
               "http://n2:9/status": {"state": "waiting", "generation": None, "joined": None}}
    view = head_view(answers)
    assert view.check("7:0.5", serving=False) is None and not view.all_joined()
    answers["http://n2:9/status"] = {"state": "starting", "generation": "12:1.1", "joined": "7:0.5"}
    assert view.check("7:0.5", serving=True) is None and view.all_joined()
    answers["http://n2:9/status"] = {"state": "waiting", "generation": None, "joined": "7:0.5",
                                     "last_cause": "killed by SIGKILL"}
    assert view.check("7:0.5", serving=True) == "node rank 2 (n2:9) restarted (killed by SIGKILL)"
    view.reset()
    assert view.check("8:9.0", serving=False) is None and view.joined == {}


def test_a_node_of_another_engine_only_holds_the_head_back_and_one_given_up_or_unreachable_is_a_cause():
    answers = {"http://n1:9/status": {"state": "serving", "generation": "11:1.0", "joined": "6:0.1"},
               "http://n2:9/status": {"state": "serving", "generation": "12:1.0", "joined": "7:0.5"}}
    view = head_view(answers)
    assert view.check("7:0.5", serving=True) is None and not view.all_joined()  # it will follow the head
    answers["http://n1:9/status"] = {"state": "failed", "last_cause": "crash loop: 5 crashes"}
    assert head_view(answers).check("7:0.5", serving=False) == "node rank 1 (n1:9) gave up: crash loop: 5 crashes"
    answers["http://n1:9/status"] = None
    view = head_view(answers, failures=2)
    assert view.check("7:0.5", serving=False) is None  # not joined, not serving: it may come up
    assert view.check("7:0.5", serving=True) == "node rank 1 (n1:9) unreachable 2 times: connection refused"


# -- a node's link to its head ---------------------------------------------------------------------

def test_a_node_joins_a_starting_head_once_and_follows_it():
    head = {"http://h:9/status": {"state": "restarting", "generation": None}}
    link = nodes.NodeLink("http://h:9/status", 2, 1, fetch=Scripted(head))
    assert link.joinable(None) is None
    head["http://h:9/status"] = {"state": "starting", "generation": "7:0.5"}
    assert link.joinable(None) == "7:0.5"
    assert link.joinable("7:0.5") is None  # the engine it joined already: wait for the next one
    assert link.check("7:0.5") == (None, False)
    head["http://h:9/status"] = {"state": "serving", "generation": "7:0.5"}
    assert link.check("7:0.5") == (None, True)
    head["http://h:9/status"] = {"state": "starting", "generation": "8:2.0"}
    assert link.check("7:0.5")[0] == "the head's engine restarted (now 8:2.0, this node joined 7:0.5)"
    head["http://h:9/status"] = {"state": "restarting", "generation": None, "last_cause": "exited 1"}
    assert link.check("8:2.0")[0] == "the head's engine is gone (restarting: exited 1)"
    head["http://h:9/status"] = None
    assert link.check("8:2.0") == (None, False)
    assert link.check("8:2.0")[0] == "the head (h:9) unreachable 2 times: connection refused"


def test_the_status_server_answers_json_and_only_on_status():
    port = free_port()
    server = nodes.StatusServer(f"127.0.0.1:{port}", lambda: {"state": "serving", "generation": "1:2.000"}).start()
    try:
        assert nodes.fetch_status(f"http://127.0.0.1:{port}/status", 2) == (
            {"state": "serving", "generation": "1:2.000"}, None)
        assert nodes.fetch_status(f"http://127.0.0.1:{port}/other", 2) == (None, "HTTP 404")
    finally:
        server.close()
    assert nodes.fetch_status(f"http://127.0.0.1:{port}/status", 2)[0] is None


@pytest.mark.parametrize("text", ["9180", "host:", ":80", "host:0", "host:70000", "host:http"])
def test_listen_addresses_are_checked(text):
    with pytest.raises(ValueError, match="ADDRESS:PORT"):
        nodes.parse_listen(text)


# -- two real supervisors, end to end ----------------------------------------------------------------

NODE_ENGINE = [sys.executable, "-c", "import time; print('fake node engine up', flush=True); time.sleep(600)"]


class Node:
    def __init__(self, tmp_path: Path, name: str, options: list[str], child: list[str]):
        self.state_path = tmp_path / name / "state.json"
        self.log = open(tmp_path / f"{name}.err", "wb")
        self.log_path = tmp_path / f"{name}.err"
        self.proc = subprocess.Popen([sys.executable, str(SUPERVISOR), "--state-file", str(self.state_path), *FAST,
                                      *options, "--", *child], stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc.pid)
        pid = self.state().get("pid")
        if pid:
            kill_group(pid)
        self.log.close()


def wait_for(predicate, what, nodes_, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    logs = "\n".join(node.log_path.read_text(errors="replace")[-1500:] for node in nodes_)
    raise AssertionError(f"timed out waiting for {what}; states={[n.state() for n in nodes_]}\n{logs}")


@pytest.fixture
def replica_over_two_hosts(tmp_path):
    api, head_status, node_status = free_port(), free_port(), free_port()
    node = Node(tmp_path, "node1", ["--node-rank", "1", "--head", f"http://127.0.0.1:{head_status}/status",
                                    "--status-listen", f"127.0.0.1:{node_status}"], NODE_ENGINE)
    head = Node(tmp_path, "head", ["--port", str(api), "--status-listen", f"127.0.0.1:{head_status}",
                                   "--peer", f"http://127.0.0.1:{node_status}/status"],
                [sys.executable, str(FAKE), "--port", str(api)])
    both = [head, node]
    wait_for(lambda: head.state().get("state") == "serving" and node.state().get("state") == "serving",
             "both serving", both)
    yield head, node, both
    for each in both:
        each.close()


def test_a_node_joins_the_heads_engine_and_both_serve(replica_over_two_hosts):
    head, node, _ = replica_over_two_hosts
    assert node.state()["joined"] == head.state()["generation"] is not None
    assert node.state()["restarts"] == head.state()["restarts"] == 0


def test_a_killed_node_engine_restarts_the_heads_and_both_come_back(replica_over_two_hosts):
    head, node, both = replica_over_two_hosts
    first = head.state()["generation"]
    kill_group(node.state()["pid"])
    wait_for(lambda: head.state().get("restarts", 0) >= 1 and head.state().get("state") == "serving"
             and node.state().get("state") == "serving", "both back", both)
    assert head.state()["generation"] != first and node.state()["joined"] == head.state()["generation"]
    assert "node rank 1" in head.state()["last_cause"] and "restarted" in head.state()["last_cause"]
    assert len(node.state()["crashes"]) == 1  # its own crash, counted once


def test_a_head_engine_that_dies_with_its_node_names_the_node_in_its_cause(replica_over_two_hosts):
    """vLLM's head engine dies by itself when a node's engine is lost (before any /status poll):
    the head's cause names the node that went with it (double: both engines killed at once)."""
    head, node, both = replica_over_two_hosts
    first = head.state()["generation"]
    kill_group(node.state()["pid"])
    kill_group(head.state()["pid"])
    wait_for(lambda: head.state().get("generation") not in (None, first) and head.state().get("state") == "serving"
             and node.state().get("state") == "serving", "both back", both)
    cause = head.state()["last_cause"]
    assert cause.startswith("node rank 1 (127.0.0.1:") and "restarted" in cause, cause
    assert "; the head's engine " in cause and len(head.state()["crashes"]) == 1, head.state()


def test_a_killed_head_engine_restarts_the_nodes_without_counting_it_a_crash_there(replica_over_two_hosts):
    head, node, both = replica_over_two_hosts
    first = head.state()["generation"]
    kill_group(head.state()["pid"])
    wait_for(lambda: node.state().get("restarts", 0) >= 1 and head.state().get("state") == "serving"
             and node.state().get("state") == "serving" and head.state().get("generation") != first,
             "both back", both)
    assert node.state()["joined"] == head.state()["generation"]
    assert node.state()["crashes"] == [] and "the head's engine" in node.state()["last_cause"]
    assert len(head.state()["crashes"]) == 1


def test_a_node_whose_supervisor_is_gone_takes_the_heads_engine_down(replica_over_two_hosts):
    head, node, both = replica_over_two_hosts
    node.proc.kill()
    kill_group(node.state()["pid"])
    wait_for(lambda: "unreachable" in (head.state().get("last_cause") or ""), "the head noticing", both)
    # it restarts its engine and waits: an engine cannot serve without the node
    wait_for(lambda: head.state().get("state") == "starting", "the head starting again", both)


@pytest.mark.parametrize(("options", "message"), [
    (["--head", "http://h/status", "--node-rank", "1"], "needs --status-listen"),
    (["--head", "http://h/status", "--status-listen", "127.0.0.1:1"], "--head goes with a --node-rank above 0"),
    (["--port", "1", "--peer", "http://n/status", "--head", "http://h/status", "--status-listen", "a:1",
      "--node-rank", "1"], "exclude each other"),
    (["--node-rank", "1", "--head", "http://h/status", "--status-listen", "nowhere"], "ADDRESS:PORT"),
    ([], "--port is required"),
])
def test_bad_node_options_are_one_line_and_exit_2(tmp_path, options, message):
    result = subprocess.run([sys.executable, str(SUPERVISOR), "--state-file", str(tmp_path / "s.json"), *options,
                             "--", "true"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_single_host_replicas_supervisor_runs_without_the_nodes_module(tmp_path):
    """Hosts and images that have the supervisor alone keep working: only a node imports the module."""
    import shutil

    alone = tmp_path / "bin" / "fm9g_replica_supervisor.py"
    alone.parent.mkdir()
    shutil.copy(SUPERVISOR, alone)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(alone), "--state-file", str(tmp_path / "s.json"), "--port", str(port),
                             *FAST, "--", sys.executable, str(FAKE), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = json.loads((tmp_path / "s.json").read_text()) if (tmp_path / "s.json").exists() else {}
            if state.get("state") == "serving":
                break
            time.sleep(0.05)
        assert state.get("state") == "serving", state
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        kill_group(proc.pid)
