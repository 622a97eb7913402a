#!/usr/bin/env python3
"""TEST DOUBLE for an env's Python holding vLLM: stands in for ENV_PYTHON in fm9g_engine_probe.py's tests.

vLLM is not installed in the test venv and the AMX/bfloat16 SIGILL cannot be produced on CI machines, so
this script is passed as `--python`. It is invoked as `fake_engine_python.py -c SNIPPET`, does NOT execute
the snippet, reads the dtype the probe asked for from FM9G_PROBE_DTYPE (where the real snippet reads it)
and behaves as the test's environment says:

  FAKE_CALLS_FILE=PATH          append {"dtype", "kwargs", "env"} as a JSON line (what the probe asked for)
  FAKE_GRANDCHILD_PIDFILE=PATH  spawn a `sleep 300` grandchild (a leftover worker) and write its pid there
  FAKE_SLEEP=S                  sleep S seconds first (to hit the probe's timeout)
  FAKE_FAULT_DTYPES=a,b         kill itself with SIGILL when the dtype is one of these
  FAKE_EXIT=N                   print an error line and exit N
  FAKE_DIED_EXIT0=1             print "Worker proc VllmWorker-0 died unexpectedly" and exit 0, no ok line
  otherwise                     print the ok JSON line the real snippet prints
"""

import json
import os
import signal
import subprocess
import sys
import time


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "-c" or "FM9G_PROBE_DTYPE" not in sys.argv[2]:
        print("fake engine: expected `-c SNIPPET` reading FM9G_PROBE_DTYPE, got %r" % sys.argv[1:], file=sys.stderr)
        return 3
    dtype = os.environ["FM9G_PROBE_DTYPE"]
    if os.environ.get("FAKE_CALLS_FILE"):
        with open(os.environ["FAKE_CALLS_FILE"], "a") as calls:
            calls.write(json.dumps({"dtype": dtype, "model": os.environ.get("FM9G_PROBE_MODEL"),
                                    "kwargs": json.loads(os.environ.get("FM9G_PROBE_KWARGS") or "{}"),
                                    "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}}) + "\n")
    if os.environ.get("FAKE_GRANDCHILD_PIDFILE"):
        worker = subprocess.Popen(["sleep", "300"])
        with open(os.environ["FAKE_GRANDCHILD_PIDFILE"], "w") as pidfile:
            pidfile.write(str(worker.pid))
    print("INFO fake engine loading model in %s" % dtype, flush=True)
    if os.environ.get("FAKE_SLEEP"):
        time.sleep(float(os.environ["FAKE_SLEEP"]))
    if dtype in os.environ.get("FAKE_FAULT_DTYPES", "").split(","):
        try:
            import resource
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the staged fault
        except (ImportError, ValueError, OSError):
            pass
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGILL)
        time.sleep(5)
        return 99
    if os.environ.get("FAKE_EXIT"):
        print("RuntimeError: fake engine failed to load the model", file=sys.stderr, flush=True)
        print("INFO shutting down", flush=True)
        return int(os.environ["FAKE_EXIT"])
    if os.environ.get("FAKE_DIED_EXIT0"):
        print("ERROR Worker proc VllmWorker-0 died unexpectedly, shutting down executor.", flush=True)
        return 0
    print(json.dumps({"ok": True, "dtype": dtype, "tokens": 24}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
