"""The guide's vLLM offline batch inference (run on a host by `fm9g-deploy infer`).

Request (JSON on stdin): {"model_dir", "prompts": [...], "max_tokens", "temperature", "top_p",
"seed", "trust_remote_code", "tokenizer_mode", "dtype", "tensor_parallel_size", "max_model_len",
"gpu_memory_utilization", "engine_kwargs": {...}}; null values are left to vLLM. Result (JSON on
stdout): {"engine", "device", "dtype", "versions", "load_seconds", "generate_seconds",
"tensor_parallel_size", "sampling", "results": [{"prompt", "text", "prompt_tokens", "output_tokens"}]}.
For the numerical proof (fm9g_deploy/numerics.py) the request may give "prompt_token_ids" (lists of
token ids, sent as they are, no chat template) instead of "prompts", and "logprobs": N; each result
then also holds "prompt_token_ids", "token_ids" and "logprobs" (the chosen token's, as vLLM
computed it from the model's raw output).
On failure: a traceback, then one line "fm9g-runner: error: ..." on stderr, exit 1.
"""

import json
import os
import sys
import time
import traceback


def generate(request):
    from transformers import AutoTokenizer
    from vllm import LLM
    import vllm

    model_dir = request["model_dir"]
    trust = bool(request.get("trust_remote_code", True))
    engine = {
        "model": model_dir,
        "tensor_parallel_size": int(request.get("tensor_parallel_size") or 1),
        "trust_remote_code": trust,
        "tokenizer_mode": request.get("tokenizer_mode") or "auto",
    }
    for key in ("dtype", "max_model_len", "gpu_memory_utilization"):
        if request.get(key) is not None:
            engine[key] = request[key]
    engine.update(request.get("engine_kwargs") or {})

    started = time.perf_counter()
    llm = LLM(**engine)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
    loaded = time.perf_counter()

    sampling = {"max_tokens": int(request.get("max_tokens") or 100)}
    for key in ("temperature", "top_p"):
        if request.get(key) is not None:
            sampling[key] = float(request[key])
    if request.get("seed") is not None:
        sampling["seed"] = int(request["seed"])
    if request.get("prompt_token_ids") is not None:
        results = _token_results(request, llm, sampling)
    else:
        results = _chat_results(request, llm, sampling, tokenizer)
    finished = time.perf_counter()
    return {
        "engine": "vllm",
        "device": _device(),
        "dtype": _dtype(llm),
        "versions": {"vllm": vllm.__version__, "torch": _torch_version()},
        "tensor_parallel_size": engine["tensor_parallel_size"],
        "sampling": sampling,
        "load_seconds": round(loaded - started, 3),
        "generate_seconds": round(finished - loaded, 3),
        "results": results,
    }


def _chat_results(request, llm, sampling, tokenizer):
    """The guide's way: each prompt as a user turn through the chat template."""
    from vllm import SamplingParams

    conversations = [
        tokenizer.apply_chat_template(conversation=[{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=False)
        for prompt in request["prompts"]
    ]
    outputs = llm.generate(conversations, SamplingParams(**sampling))
    return [
        {
            "prompt": prompt,
            "text": output.outputs[0].text.strip(),
            "prompt_tokens": len(output.prompt_token_ids or []),
            "output_tokens": len(output.outputs[0].token_ids),
        }
        for prompt, output in zip(request["prompts"], outputs)
    ]


def _token_results(request, llm, sampling):
    """Token ids in, token ids and each chosen token's log-probability out."""
    from vllm import SamplingParams

    sampling["logprobs"] = int(request.get("logprobs") or 1)
    sampling["ignore_eos"] = True
    prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in request["prompt_token_ids"]]
    outputs = llm.generate(prompts, SamplingParams(**sampling))
    results = []
    for ids, output in zip(request["prompt_token_ids"], outputs):
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        results.append({
            "prompt_token_ids": list(ids),
            "token_ids": tokens,
            "logprobs": [float(step[token].logprob) for token, step in zip(tokens, completion.logprobs)],
            "text": completion.text,
            "prompt_tokens": len(ids),
            "output_tokens": len(tokens),
        })
    return results


def _device():
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _dtype(llm):
    try:
        return str(llm.llm_engine.model_config.dtype).replace("torch.", "")
    except AttributeError:
        return "unknown"


def _torch_version():
    import torch

    return torch.__version__


def main():
    request = json.load(sys.stdin)
    result_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # vLLM logs to stdout: send all of it to stderr; stdout carries only the result
    try:
        result = generate(request)
    except Exception as exc:
        traceback.print_exc()
        print("fm9g-runner: error: " + _one_line(exc), file=sys.stderr, flush=True)
        return 1
    json.dump(result, result_stream, ensure_ascii=False)
    result_stream.write("\n")
    result_stream.flush()
    return 0


def _one_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "{}: {}".format(type(exc).__name__, lines[0] if lines else "")[:400]


if __name__ == "__main__":
    sys.exit(main())
