"""The model catalog: architecture facts per model (data/models.yml) and the sizes the capacity
planner derives from them.

Sizes follow the architecture of every catalog model: a decoder with embeddings, per layer
q/k/v/o attention projections, a gated (SwiGLU) MLP and two RMSNorms, a final norm, and an
lm_head unless it is tied to the embeddings. Biases are left out (a few MB at most).
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

#: Bytes per element of each weight / KV-cache dtype the catalog uses.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class ModelSpec(BaseModel):
    """Architecture and provenance of one model, enough to size weights and KV cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    display_name: str
    architecture: str
    hidden_size: PositiveInt
    intermediate_size: PositiveInt
    num_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_kv_heads: PositiveInt
    head_dim: PositiveInt
    vocab_size: PositiveInt
    tie_word_embeddings: bool
    max_model_len: PositiveInt
    dtype: str
    vllm_wheel_family: str
    #: What upstream vLLM serves this architecture as (a stack profile with architecture_mapping
    #: "upstream" rewrites config.json to it at install: fm9g_deploy/architecture.py); None: only
    #: a vLLM that knows the architecture natively can serve it.
    upstream_architecture: str | None = None
    #: MiniCPM-style scales of FM9G, where the catalog knows them (the generated models use them;
    #: a real checkpoint's own config.json is what the mapping reads).
    scale_emb: float | None = None
    scale_depth: float | None = None
    dim_model_base: int | None = None
    tarball: str | None = None
    tarball_urls: list[str] = Field(default_factory=list)
    #: Made by fm9g-deploy itself instead of downloaded (the sandbox's tiny model).
    generated: bool = False

    def expected_shape(self) -> dict:
        """The fields a checkpoint's config.json must match (fm9g_deploy/architecture.py's names)."""
        return {field: getattr(self, field) for field in
                ("hidden_size", "intermediate_size", "num_layers", "num_attention_heads", "num_kv_heads",
                 "vocab_size", "tie_word_embeddings")}

    # -- parameter counts -------------------------------------------------------------------

    @property
    def norm_parameters(self) -> int:
        """RMSNorm weights: two per layer and a final one. vLLM keeps a full copy on every GPU."""
        return (2 * self.num_layers + 1) * self.hidden_size

    @property
    def parameter_count(self) -> int:
        """All parameters, derived from the architecture fields."""
        q_and_o = 2 * self.hidden_size * self.num_attention_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        mlp = 3 * self.hidden_size * self.intermediate_size  # gate, up and down projections
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embeddings
        return self.num_layers * (q_and_o + k_and_v + mlp) + embeddings + lm_head + self.norm_parameters

    # -- bytes ------------------------------------------------------------------------------

    def dtype_bytes(self, dtype: str | None = None) -> int:
        name = self.dtype if dtype in (None, "auto") else dtype
        try:
            return DTYPE_BYTES[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPE_BYTES)}") from None

    def kv_cache_bytes_per_token(self, dtype: str | None = None) -> int:
        """K and V for every layer: 2 * layers * kv_heads * head_dim * bytes per element."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes(dtype)

    # -- per-GPU shares under tensor parallelism ---------------------------------------------

    def kv_heads_per_gpu(self, tensor_parallel_size: int) -> int:
        """KV heads each GPU holds: split when TP divides them, else replicated (vLLM's rule)."""
        return max(1, self.num_kv_heads // tensor_parallel_size)

    def weight_bytes_per_gpu(self, tensor_parallel_size: int, dtype: str | None = None) -> int:
        """Weights one GPU holds: everything but the norms is sharded (embeddings by vocab);
        replicated KV heads (TP above the KV-head count) add their copies back."""
        tp = tensor_parallel_size
        sharded = self.parameter_count - self.norm_parameters
        kv_head_projections = self.num_layers * 2 * self.hidden_size * self.head_dim  # K and V of one head
        replicated_kv = kv_head_projections * (self.kv_heads_per_gpu(tp) - self.num_kv_heads / tp)
        parameters = math.ceil(sharded / tp + replicated_kv) + self.norm_parameters
        return parameters * self.dtype_bytes(dtype)

    def kv_cache_bytes_per_token_per_gpu(self, tensor_parallel_size: int, dtype: str | None = None) -> int:
        return 2 * self.num_layers * self.kv_heads_per_gpu(tensor_parallel_size) * self.head_dim * self.dtype_bytes(dtype)

    # -- per-GPU shares of the heaviest stage under pipeline parallelism ------------------------

    def stage_layers(self, pipeline_parallel_size: int) -> int:
        """Layers of the largest pipeline stage (vLLM splits them as evenly as it can)."""
        return -(-self.num_layers // pipeline_parallel_size)

    def embedding_bytes_per_gpu(self, tensor_parallel_size: int, dtype: str | None = None) -> int:
        """One vocab x hidden matrix (the embedding, or the lm_head), sharded by vocab over TP."""
        return math.ceil(self.vocab_size * self.hidden_size / tensor_parallel_size) * self.dtype_bytes(dtype)

    def stage_weight_bytes_per_gpu(self, tensor_parallel_size: int, pipeline_parallel_size: int,
                                   dtype: str | None = None) -> int:
        """Weights one GPU of the heaviest pipeline stage holds. PP 1: weight_bytes_per_gpu. Beyond:
        the stage's layers (sharded as there) and one vocab x hidden matrix, since the first stage
        holds the embedding and the last the lm_head (a tied one too); both are the same size."""
        tp, pp = tensor_parallel_size, pipeline_parallel_size
        if pp == 1:
            return self.weight_bytes_per_gpu(tp, dtype)
        layers = self.stage_layers(pp)
        per_layer = (2 * self.hidden_size * self.num_attention_heads * self.head_dim
                     + 2 * self.hidden_size * self.num_kv_heads * self.head_dim
                     + 3 * self.hidden_size * self.intermediate_size)
        kv_head_projections = layers * 2 * self.hidden_size * self.head_dim
        replicated_kv = kv_head_projections * (self.kv_heads_per_gpu(tp) - self.num_kv_heads / tp)
        norms = (2 * layers + 1) * self.hidden_size  # the last stage's final norm counted on every one
        parameters = math.ceil((layers * per_layer + self.vocab_size * self.hidden_size) / tp + replicated_kv) + norms
        return parameters * self.dtype_bytes(dtype)

    def stage_kv_cache_bytes_per_token_per_gpu(self, tensor_parallel_size: int, pipeline_parallel_size: int,
                                               dtype: str | None = None) -> int:
        """KV cache per token on one GPU of the heaviest stage: only its own layers' K and V."""
        share = self.stage_layers(pipeline_parallel_size)
        return 2 * share * self.kv_heads_per_gpu(tensor_parallel_size) * self.head_dim * self.dtype_bytes(dtype)

    def tensor_parallel_sizes(self, limit: int = 64) -> list[int]:
        """TP sizes vLLM can shard this model over: they divide the attention heads and the MLP
        width, and the KV heads divide TP or TP divides them."""
        return [
            tp for tp in range(1, limit + 1)
            if self.num_attention_heads % tp == 0
            and self.intermediate_size % tp == 0
            and (self.num_kv_heads % tp == 0 or tp % self.num_kv_heads == 0)
        ]


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, ModelSpec]:
    raw = yaml.safe_load(resources.files("fm9g_deploy").joinpath("data/models.yml").read_text("utf-8"))
    return {name: ModelSpec(name=name, **fields) for name, fields in raw.items()}


def model_names() -> list[str]:
    return list(load_catalog())


def get_model(name: str) -> ModelSpec:
    """The catalog entry for ``name``; KeyError if unknown (config validation names the choices)."""
    return load_catalog()[name]
