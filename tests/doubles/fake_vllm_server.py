"""TEST DOUBLE of vLLM's OpenAI API server, for the replica supervisor's tests.

Not vLLM: a standard-library HTTP server on 127.0.0.1:PORT that answers GET /health
with 200, plus switches that reproduce the ways a real replica fails:

  --exit-after S --exit-code C   print vLLM's "worker died" line, exit C after S s
                                 (C=0 is the real fault: the API server exits 0)
  --health-503-after S           keep running, but answer /health with 503 (engine dead)
  --sigill-after S               kill itself with SIGILL
  --crash-at-start               print "RuntimeError: boom" and exit 1 at once
  --drain S                      on SIGTERM keep serving S s, then exit 0
  --spawn-grandchild PIDFILE     start `sleep 300` (a stand-in engine worker), write its pid
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UNHEALTHY = threading.Event()


def say(message):
    print("fake vllm: " + message, flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        status = 503 if UNHEALTHY.is_set() else 200
        if self.path != "/health":
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--exit-after", type=float)
    p.add_argument("--exit-code", type=int, default=0)
    p.add_argument("--health-503-after", type=float)
    p.add_argument("--sigill-after", type=float)
    p.add_argument("--crash-at-start", action="store_true")
    p.add_argument("--drain", type=float, default=0.0)
    p.add_argument("--spawn-grandchild")
    return p.parse_args()


def main():
    args = parse_args()
    if args.crash_at_start:
        print("Traceback (most recent call last):\nRuntimeError: boom", flush=True)
        sys.exit(1)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    say("serving on port %d, pid %d" % (args.port, os.getpid()))
    if args.spawn_grandchild:
        worker = subprocess.Popen(["sleep", "300"])
        with open(args.spawn_grandchild + ".tmp", "w") as f:
            f.write(str(worker.pid))
        os.replace(args.spawn_grandchild + ".tmp", args.spawn_grandchild)

    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    started = time.monotonic()
    while not terminated.wait(0.05):
        elapsed = time.monotonic() - started
        if args.exit_after is not None and elapsed >= args.exit_after:
            say("Worker proc VllmWorker-0 died unexpectedly, shutting down executor.")
            os._exit(args.exit_code)
        if args.sigill_after is not None and elapsed >= args.sigill_after:
            signal.signal(signal.SIGILL, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGILL)
        if args.health_503_after is not None and elapsed >= args.health_503_after and not UNHEALTHY.is_set():
            say("EngineCore gone; /health now answers 503")
            UNHEALTHY.set()
    say("got SIGTERM, draining for %gs" % args.drain)
    time.sleep(args.drain)
    say("drain done, exiting 0")
    os._exit(0)


if __name__ == "__main__":
    main()
