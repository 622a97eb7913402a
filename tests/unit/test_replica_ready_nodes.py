"""library/fm9g_replica_ready.py at the head of a replica over hosts: a node that will not join fails
the wait naming its host and why, and a wait that times out names the nodes not in the engine.
The nodes' /status answers are test doubles (scripted dicts); the clock is a counter."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import PROJECT_ROOT, load_file_module


@pytest.fixture(scope="module")
def ready():
    utils = load_file_module(PROJECT_ROOT / "module_utils" / "fm9g_replicas.py")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "ansible.module_utils.fm9g_replicas", utils)
        yield load_file_module(PROJECT_ROOT / "library" / "fm9g_replica_ready.py")


NODE = {"rank": 0, "hosts": ["host1", "host2", "host3"],
        "status_urls": ["http://10.0.0.1:29510/status", "http://10.0.0.2:29510/status", "http://10.0.0.3:29510/status"]}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def watch(ready, answers, clock, grace=60):
    """A NodeWatch whose fetch answers ``answers[url]`` (a status dict, or a reason string: unreachable)."""
    def fetch(url):
        answer = answers[url]
        return (answer, None) if isinstance(answer, dict) else (None, answer)
    return ready.NodeWatch(NODE, grace, fetch=fetch, clock=clock)


def test_nodes_that_are_starting_or_briefly_silent_are_no_problem_yet(ready):
    clock = Clock()
    answers = {NODE["status_urls"][1]: {"state": "waiting"}, NODE["status_urls"][2]: "connection refused"}
    nodes = watch(ready, answers, clock)
    assert nodes.problem() is None
    clock.now = 59
    assert nodes.problem() is None


def test_a_node_silent_past_the_grace_fails_the_wait_naming_its_host(ready):
    clock = Clock()
    answers = {NODE["status_urls"][1]: {"state": "serving"}, NODE["status_urls"][2]: "connection refused"}
    nodes = watch(ready, answers, clock)
    assert nodes.problem() is None
    clock.now = 61
    assert nodes.problem() == ("node rank 2 (host3) did not join: its supervisor does not answer "
                               "http://10.0.0.3:29510/status for 61s: connection refused")


def test_a_node_that_answers_again_starts_its_grace_anew(ready):
    clock = Clock()
    url = NODE["status_urls"][2]
    answers = {NODE["status_urls"][1]: {"state": "waiting"}, url: "timed out"}
    nodes = watch(ready, answers, clock)
    nodes.problem()
    clock.now, answers[url] = 50, {"state": "waiting"}
    assert nodes.problem() is None
    clock.now, answers[url] = 100, "timed out"
    assert nodes.problem() is None  # silent since 100, not since 0


def test_a_node_that_gave_up_fails_the_wait_at_once(ready):
    answers = {NODE["status_urls"][1]: {"state": "failed", "last_cause": "5 crashes in 600s: ImportError"},
               NODE["status_urls"][2]: {"state": "waiting"}}
    assert watch(ready, answers, Clock()).problem() == (
        "node rank 1 (host2) did not join: it gave up: 5 crashes in 600s: ImportError")


def test_the_timeout_message_names_the_nodes_not_in_the_heads_engine(ready):
    answers = {NODE["status_urls"][1]: {"state": "serving", "joined": "7:1.000"},
               NODE["status_urls"][2]: {"state": "waiting", "joined": "3:0.500"}}
    nodes = watch(ready, answers, Clock())
    nodes.problem()
    assert nodes.not_joined("7:1.000") == "; not joined: host3 (node rank 2) waiting"
    assert nodes.not_joined(None) == "; not joined: host2 (node rank 1) serving, host3 (node rank 2) waiting"
