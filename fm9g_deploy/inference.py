"""`fm9g-deploy infer`: build the runner's request, run the runner on a host, read its result.

The runner (fm9g_deploy/runners/<engine>_runner.py) goes to the host through playbooks/infer.yml,
runs there with the env's Python and the installed model, reads the request on standard input
and prints one JSON result; the playbook hands its output back as a file on the control node.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm9g_deploy.errors import OperationFailed, UserError

#: The guide's defaults per engine (its two sample scripts): greedy with 256 new tokens for
#: transformers; temperature 0.8, top_p 0.95, 100 tokens for vLLM.
GUIDE_DEFAULTS = {
    "transformers": {"max_tokens": 256, "temperature": None, "top_p": None},
    "vllm": {"max_tokens": 100, "temperature": 0.8, "top_p": 0.95},
}
#: Longest prompt accepted (characters): the runners hold all prompts in one request.
MAX_PROMPT_CHARS = 100_000


@dataclass
class InferRequest:
    """What the runner gets (``payload``, on stdin) and where it runs (env's Python, environment)."""

    engine: str
    payload: dict[str, Any]
    python: str
    environment: dict[str, str] = field(default_factory=dict)


def check_host(inventory: Path, host: str) -> None:
    """UserError unless ``host`` is a host of the inventory."""
    from fm9g_deploy.ansible import inventory_parse_problem, read_inventory

    manager, _, warnings = read_inventory(inventory)
    if manager.get_host(host) is None:
        problem = inventory_parse_problem(inventory, warnings)
        if problem:  # the host may be in the part Ansible could not read
            raise UserError(f"inventory {inventory} cannot be parsed ({problem[:250]}); fix it")
        known = sorted(h.name for h in manager.get_hosts())
        listed = f" (it has {', '.join(known[:10])}{', ...' if len(known) > 10 else ''})" if known else ""
        raise UserError(f"host {host!r} is not in inventory {inventory}{listed}; pass --host with one of its hosts")


def read_prompts(prompts: list[str] | None, prompts_file: Path | None, limit: int) -> list[str]:
    """The prompts from --prompt (repeated) or --prompts-file; UserError when none or too many."""
    from fm9g_deploy.bench.workload import load_prompts_file

    if prompts_file is not None:
        found = load_prompts_file(prompts_file)
        where = f"prompts file {prompts_file}"
    else:
        found = [p.strip() for p in prompts or []]
        if not found or not all(found):
            raise UserError("--prompt is empty; write the question to ask")
        where = "--prompt"
    if len(found) > limit:
        raise UserError(f"{where} has {len(found)} prompts, more than {limit}; split them over several runs")
    too_long = next((p for p in found if len(p) > MAX_PROMPT_CHARS), None)
    if too_long is not None:
        raise UserError(f"{where}: a prompt has {len(too_long)} characters, more than {MAX_PROMPT_CHARS}; shorten it")
    return found


def engine_kwargs(vllm_args: list[str]) -> dict[str, Any]:
    """The profile's vLLM server flags as LLM(...) keyword arguments: ['--enforce-eager',
    '--max-num-seqs', '8'] -> {'enforce_eager': True, 'max_num_seqs': 8}."""
    kwargs: dict[str, Any] = {}
    words = [w for arg in vllm_args for w in shlex.split(arg)]
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise UserError(f"profile vllm_args: {word!r} is not a --flag; fix the profile")
        name, _, inline = word[2:].partition("=")
        key = name.replace("-", "_")
        if inline:
            kwargs[key] = _scalar(inline)
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            kwargs[key] = _scalar(words[i + 1])
            i += 1
        else:
            kwargs[key] = True
        i += 1
    return kwargs


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def build_request(args, config, inventory: Path, prompts: list[str]) -> InferRequest:
    """The runner's request from the options, the config, the profile and (for vLLM) the host's plan."""
    from fm9g_deploy import layout
    from fm9g_deploy.profiles import load_profile

    engine = args.engine
    defaults = GUIDE_DEFAULTS[engine]
    # Written so nan fails each check too; the upper bounds refuse inf and numbers the engines
    # would only fail on, on the host, after loading the model.
    if args.max_tokens is not None and not 1 <= args.max_tokens <= 1 << 20:
        raise UserError(f"--max-tokens {args.max_tokens} must be 1 to {1 << 20}")
    if args.temperature is not None and not 0 <= args.temperature <= 100:
        raise UserError(f"--temperature {args.temperature:g} must be 0 to 100")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p:g} must be above 0 and at most 1")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed {args.seed} must be 0 to {2**32 - 1}")
    if not 10 <= args.timeout <= 7 * 86400:
        raise UserError(f"--timeout {args.timeout} must be 10 to {7 * 86400} seconds")
    profile = load_profile(config.profile)
    serving = config.serving
    payload: dict[str, Any] = {
        "model_dir": layout.model_current(config),
        "prompts": prompts,
        "max_tokens": args.max_tokens or defaults["max_tokens"],
        "temperature": args.temperature if args.temperature is not None else defaults["temperature"],
        "top_p": args.top_p if args.top_p is not None else defaults["top_p"],
        "seed": args.seed,
        "trust_remote_code": serving.trust_remote_code,
    }
    environment = {"PYTHONUNBUFFERED": "1"}
    if engine == "vllm":
        replica = _planned_replica(config, inventory, args.host)
        payload.update({
            "tokenizer_mode": serving.tokenizer_mode,
            "dtype": serving.dtype,
            "tensor_parallel_size": replica.tensor_parallel_size,
            "max_model_len": replica.max_model_len,
            "gpu_memory_utilization": replica.gpu_memory_utilization,
            "engine_kwargs": engine_kwargs(list(profile.vllm_args)),
        })
        if replica.gpus:
            # The GPUs the planner gives the host's first replica: the TP group's cards.
            environment.update({"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                "CUDA_VISIBLE_DEVICES": ",".join(map(str, replica.gpus))})
        elif profile.accelerator == "cpu":
            environment["VLLM_CPU_KVCACHE_SPACE"] = str(serving.cpu_kvcache_space_gib)
    return InferRequest(engine=engine, payload=payload, python=layout.env_python(profile.env.name),
                        environment=environment)


def _planned_replica(config, inventory: Path, host: str):
    """The planner's first replica on ``host`` (TP, GPUs, sizes), from the host's GPU facts."""
    from fm9g_deploy.catalog import get_model
    from fm9g_deploy.facts import gather_gpu_facts
    from fm9g_deploy.planner import plan_host
    from fm9g_deploy.profiles import load_profile

    facts = gather_gpu_facts(inventory, limit=host)
    if host not in facts:
        raise OperationFailed(f"reading GPU facts of {host} gave nothing; check that it is reachable "
                              "(`fm9g-deploy ping`)")
    plan = plan_host(host, facts[host], get_model(config.model.name), load_profile(config.profile), config.serving)
    return plan.replicas[0]


def run_on_host(inventory: Path, host: str, config, request: InferRequest, *, timeout_s: int) -> dict:
    """Run the engine's runner on ``host`` through playbooks/infer.yml and return its result."""
    from fm9g_deploy.ansible import run_playbook
    from fm9g_deploy.runners import runner_script

    with tempfile.TemporaryDirectory(prefix="fm9g-infer-") as folder:
        result = run_playbook("infer.yml", inventory, limit=host, quiet=True, extra_vars={
            "fm9g_infer_host": host,
            "fm9g_infer_dir": folder,
            "fm9g_infer_runner": str(runner_script(request.engine)),
            "fm9g_infer_python": request.python,
            "fm9g_infer_model_dir": request.payload["model_dir"],
            "fm9g_infer_request": request.payload,
            "fm9g_infer_environment": request.environment,
            "fm9g_infer_timeout_s": timeout_s,
        })
        report_path = Path(folder) / f"{host}.json"
        report = json.loads(report_path.read_text("utf-8")) if report_path.is_file() else None
    if report is None:
        detail = "; ".join(result.problems[:2]) or f"ansible-playbook exited with {result.rc}"
        raise OperationFailed(f"infer on {host} failed: {detail}")
    return parse_report(host, request.engine, report, timeout_s)


def parse_report(host: str, engine: str, report: dict, timeout_s: int) -> dict:
    """The runner's JSON result from the playbook's report {missing, rc, stdout, stderr}; UserError
    when the host lacks the env or the model, OperationFailed with the runner's own last words
    when it failed."""
    if report.get("missing"):
        raise UserError(f"{host} has no {' and no '.join(report['missing'])}; run `fm9g-deploy provision` "
                        "with this config for that host first")
    rc = int(report["rc"]) if report.get("rc") is not None else -1
    stderr_lines = [line.strip() for line in str(report.get("stderr", "")).splitlines() if line.strip()]
    if rc in (124, 137):
        raise OperationFailed(f"{engine} inference on {host} did not finish within {timeout_s} s; "
                              "raise --timeout or send fewer prompts")
    if rc != 0:
        said = next((line.split("fm9g-runner: error:", 1)[1].strip() for line in reversed(stderr_lines)
                     if "fm9g-runner: error:" in line), None)
        said = said or (stderr_lines[-1] if stderr_lines else f"exit code {rc}")
        raise OperationFailed(f"{engine} inference on {host} failed: {said[:400]}")
    lines = [line for line in str(report.get("stdout", "")).splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise OperationFailed(f"{engine} inference on {host} printed no result; "
                              f"its last words: {stderr_lines[-1][:300] if stderr_lines else 'none'}") from None
    if not isinstance(result, dict) or not isinstance(result.get("results"), list):
        raise OperationFailed(f"{engine} inference on {host} printed an unexpected result")
    return result
