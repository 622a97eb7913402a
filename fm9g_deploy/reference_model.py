"""FM9G's forward pass written from the architecture's math, in NumPy float64.

The yardstick of the numerical proof (fm9g_deploy/numerics.py): it shares no code with vLLM or
with transformers. Per layer, in order:

- embeddings: ``E[token] * scale_emb``;
- attention: RMSNorm (``x / sqrt(mean(x^2) + eps) * w``), q/k/v projections, rotary position
  embedding on q and k (rotate-half form, ``theta^(-2i/d)``), causal softmax attention with
  ``1/sqrt(head_dim)``, grouped-query heads (query head ``h`` reads KV head
  ``h // (heads / kv_heads)``), o projection;
- residual: ``x + branch * scale_depth / sqrt(num_hidden_layers)``, after attention and after
  the SwiGLU MLP (``down(silu(gate(x)) * up(x))``) alike;
- head: final RMSNorm, the hidden state times ``dim_model_base / hidden_size``, the lm_head (the
  embedding matrix when tied), log-softmax.

Needs numpy only; reads safetensors files itself (bf16 included).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from fm9g_deploy.architecture import ORIGINAL_CONFIG, scales


def _bf16_to_float32(raw: bytes) -> np.ndarray:
    return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


_DTYPES = {"F32": lambda raw: np.frombuffer(raw, dtype=np.float32),
           "F16": lambda raw: np.frombuffer(raw, dtype=np.float16),
           "BF16": _bf16_to_float32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, as float64 arrays."""
    data = Path(path).read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    body = memoryview(data)[8 + header_size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        convert = _DTYPES.get(info["dtype"])
        if convert is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which the reference does not read")
        tensors[name] = convert(bytes(body[start:end])).astype(np.float64).reshape(info["shape"])
    return tensors


def checkpoint_config(model_dir: Path) -> dict:
    """The checkpoint's own config (the original when config.json was mapped for upstream vLLM)."""
    model_dir = Path(model_dir)
    original = model_dir / ORIGINAL_CONFIG
    return json.loads((original if original.is_file() else model_dir / "config.json").read_text("utf-8"))


class ReferenceModel:
    """A checkpoint held in float64 and its forward pass."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        self.config = config
        self.weights = weights
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // self.heads
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        rope = config.get("rope_parameters") or {}
        self.rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
        self.scales = scales(config)
        tied = config.get("tie_word_embeddings", True)
        self.head = weights["model.embed_tokens.weight"] if tied else weights["lm_head.weight"]

    @classmethod
    def load(cls, model_dir: Path) -> ReferenceModel:
        model_dir = Path(model_dir)
        weights: dict[str, np.ndarray] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            weights.update(read_safetensors(path))
        if not weights:
            raise ValueError(f"{model_dir} has no *.safetensors weights")
        return cls(checkpoint_config(model_dir), weights)

    def _rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rotary(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inverse = self.rope_theta ** (-np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        angles = positions[:, None].astype(np.float64) * inverse[None, :]
        angles = np.concatenate([angles, angles], axis=-1)  # [T, head_dim]
        return np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    @staticmethod
    def _rotate_half(x: np.ndarray) -> np.ndarray:
        half = x.shape[-1] // 2
        return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)

    def _attention(self, x: np.ndarray, layer: str, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        w = self.weights
        steps = x.shape[0]
        q = (x @ w[f"{layer}.self_attn.q_proj.weight"].T).reshape(steps, self.heads, self.head_dim)
        k = (x @ w[f"{layer}.self_attn.k_proj.weight"].T).reshape(steps, self.kv_heads, self.head_dim)
        v = (x @ w[f"{layer}.self_attn.v_proj.weight"].T).reshape(steps, self.kv_heads, self.head_dim)
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        group = self.heads // self.kv_heads
        future = np.triu(np.ones((steps, steps), dtype=bool), k=1)
        out = np.empty_like(q)
        for head in range(self.heads):
            kv = head // group
            scores = (q[:, head, :] @ k[:, kv, :].T) / math.sqrt(self.head_dim)
            scores[future] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            out[:, head, :] = weights @ v[:, kv, :]
        return out.reshape(steps, self.heads * self.head_dim) @ w[f"{layer}.self_attn.o_proj.weight"].T

    def _mlp(self, x: np.ndarray, layer: str) -> np.ndarray:
        w = self.weights
        gate = x @ w[f"{layer}.mlp.gate_proj.weight"].T
        up = x @ w[f"{layer}.mlp.up_proj.weight"].T
        return (gate / (1.0 + np.exp(-gate)) * up) @ w[f"{layer}.mlp.down_proj.weight"].T

    def logprobs(self, token_ids: list[int]) -> np.ndarray:
        """[len(token_ids), vocab] log-probabilities of the next token after each position."""
        w = self.weights
        ids = np.asarray(token_ids, dtype=np.int64)
        x = w["model.embed_tokens.weight"][ids] * self.scales["embedding"]
        cos, sin = self._rotary(np.arange(len(ids)))
        for index in range(self.layers):
            layer = f"model.layers.{index}"
            x = x + self._attention(self._rms_norm(x, w[f"{layer}.input_layernorm.weight"]), layer, cos, sin) \
                * self.scales["residual"]
            x = x + self._mlp(self._rms_norm(x, w[f"{layer}.post_attention_layernorm.weight"]), layer) \
                * self.scales["residual"]
        logits = (self._rms_norm(x, w["model.norm.weight"]) * self.scales["logits"]) @ self.head.T
        logits -= logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
