"""The guide's transformers inference, one prompt at a time (run on a host by `fm9g-deploy infer`).

Request (JSON on stdin): {"model_dir", "prompts": [...], "max_tokens", "temperature", "top_p",
"seed", "trust_remote_code", "device", "dtype"}; temperature / top_p / seed may be null (the
model's generation config decides, as in the guide); device is "cuda", "cpu" or null (CUDA when
there is a GPU, as in the guide); dtype is a torch dtype name or null (bfloat16 on a GPU, as in
the guide; the checkpoint's own on a CPU). Result (JSON on stdout): {"engine", "device",
"device_type", "dtype", "versions", "sampling", "load_seconds", "generate_seconds",
"results": [{"prompt", "text", "prompt_tokens", "output_tokens"}]}. On failure: a traceback,
then one line "fm9g-runner: error: ..." on stderr, exit 1.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import traceback

#: Where a model mapped for upstream vLLM keeps its own config (fm9g_deploy/architecture.py).
ORIGINAL_CONFIG = "config.fm9g.json"


def checkpoint_view(model_dir):
    """(directory to load, temporary directory to remove or None): the model as its authors ship it.

    A model mapped for upstream vLLM has a rewritten config.json (Llama's model type, vLLM's
    MiniCPM class) that transformers would load as plain Llama, silently dropping FM9G's scales.
    Its own config and remote code are kept; load them through a view of links.
    """
    original = os.path.join(model_dir, ORIGINAL_CONFIG)
    if not os.path.isfile(original):
        return model_dir, None
    view = tempfile.mkdtemp(prefix="fm9g-checkpoint-")
    for name in os.listdir(model_dir):
        if name not in ("config.json", ORIGINAL_CONFIG):
            os.symlink(os.path.join(os.path.abspath(model_dir), name), os.path.join(view, name))
    os.symlink(os.path.abspath(original), os.path.join(view, "config.json"))
    return view, view


def generate(request):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = request["model_dir"]
    trust = bool(request.get("trust_remote_code", True))
    wanted = request.get("device")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch sees no GPU (torch {})".format(torch.__version__))
    cuda = wanted == "cuda" or (wanted is None and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    # The guide loads bf16 for its GPU; on a CPU keep the dtype the checkpoint was saved in.
    if request.get("dtype") not in (None, "auto"):
        dtype = getattr(torch, request["dtype"])
    else:
        dtype = torch.bfloat16 if cuda else "auto"
    # transformers renamed torch_dtype to dtype in 4.56; the guide's stack pins 4.44.
    dtype_keyword = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"

    started = time.perf_counter()
    load_dir, view = checkpoint_view(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_dir, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(load_dir, trust_remote_code=trust, **{dtype_keyword: dtype})
    finally:
        if view:
            shutil.rmtree(view, ignore_errors=True)
    model.to(device)
    model.eval()
    loaded = time.perf_counter()

    options = {"max_new_tokens": int(request.get("max_tokens") or 256)}
    temperature, top_p = request.get("temperature"), request.get("top_p")
    if temperature is not None and temperature <= 0:
        options["do_sample"] = False
    elif temperature is not None or top_p is not None:
        options["do_sample"] = True
        if temperature is not None:
            options["temperature"] = float(temperature)
        if top_p is not None:
            options["top_p"] = float(top_p)
    if request.get("seed") is not None:
        torch.manual_seed(int(request["seed"]))
    if tokenizer.pad_token_id is None:
        options["pad_token_id"] = tokenizer.eos_token_id

    results = []
    for prompt in request["prompts"]:
        text = tokenizer.apply_chat_template(conversation=[{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(text, return_tensors="pt")
        inputs.to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, **options)
        new_tokens = output[0][inputs.input_ids.shape[1]:]
        results.append({
            "prompt": prompt,
            "text": tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
            "prompt_tokens": int(inputs.input_ids.shape[1]),
            "output_tokens": int(new_tokens.shape[0]),
        })
    finished = time.perf_counter()
    return {
        "engine": "transformers",
        "device": torch.cuda.get_device_name(model.device) if cuda else "cpu",
        # Where the weights really are, not where they were asked to be.
        "device_type": next(model.parameters()).device.type,
        "dtype": str(model.dtype).replace("torch.", ""),
        "architecture": type(model).__name__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": sys.version.split()[0]},
        "sampling": {key: value for key, value in options.items() if key != "pad_token_id"},
        "load_seconds": round(loaded - started, 3),
        "generate_seconds": round(finished - loaded, 3),
        "results": results,
    }


def _version(text):
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def main():
    request = json.load(sys.stdin)
    result_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # libraries print to stdout too: send all of it to stderr; stdout carries the result
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
