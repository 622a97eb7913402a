"""FM9G's architecture as upstream vLLM serves it: the config rewrite, and the checks behind it.

FM9G checkpoints say ``FM9GForCausalLM``, which only the guide's vLLM fork knows. Their math is
MiniCPM's (embeddings times ``scale_emb``, each residual branch times
``scale_depth / sqrt(num_hidden_layers)``, the final hidden state divided by
``hidden_size / dim_model_base`` before the head) over Llama's tensor names, and upstream vLLM
ships that math as ``MiniCPMForCausalLM``. The mapping rewrites ``config.json`` so upstream vLLM
loads it as that class, with no remote code; the original stays beside it as ``config.fm9g.json``
(the transformers way and a native profile read it from there).

Standard library only, and Python 3.8 compatible: this same file is the Ansible module_utils
``fm9g_architecture`` (module_utils/fm9g_architecture.py links here) that
library/fm9g_model_config.py runs on the hosts.
"""

from __future__ import annotations

import math

#: Serve the checkpoint's own config (a vLLM that knows FM9GForCausalLM).
NATIVE = "native"
#: Where the mapping keeps the checkpoint's own config.json.
ORIGINAL_CONFIG = "config.fm9g.json"
#: The key a mapped config.json carries: what it was mapped from and to.
MAPPING_KEY = "fm9g_deploy_mapping"

#: Targets this module can map to, with the config fields the target's vLLM class reads beyond
#: Llama's and that change its math: a checkpoint without them cannot be served faithfully.
TARGETS = {
    "MiniCPMForCausalLM": ("scale_emb", "scale_depth", "dim_model_base"),
}
#: Fields the reference forward pass and every target need.
_COMMON_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
#: What the config may call a field, by the catalog's name for it (config names first).
CATALOG_FIELDS = {
    "hidden_size": ("hidden_size",),
    "intermediate_size": ("intermediate_size",),
    "num_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "num_kv_heads": ("num_key_value_heads", "num_attention_heads"),
    "vocab_size": ("vocab_size",),
    "tie_word_embeddings": ("tie_word_embeddings",),
}
#: Keys of the original that would make transformers or vLLM load something else than the target.
_DROPPED_KEYS = ("auto_map",)


class MappingError(ValueError):
    """The checkpoint cannot be mapped as asked; the message names the field and the fix."""


def is_mapped(config: dict) -> bool:
    return isinstance(config.get(MAPPING_KEY), dict)


def config_value(config: dict, catalog_field: str):
    """The config's value for a catalog field (kv heads default to the attention heads: MHA)."""
    for name in CATALOG_FIELDS[catalog_field]:
        if name in config:
            return config[name]
    # transformers' default: untied only when the config says so.
    return True if catalog_field == "tie_word_embeddings" else None


def check_shape(config: dict, expected: dict) -> None:
    """MappingError when the config's shape differs from the catalog's (the wrong tarball)."""
    for field, want in sorted(expected.items()):
        got = config_value(config, field)
        if got != want:
            raise MappingError(
                "config.json says %s=%r but the catalog's model has %r; the tarball is not the "
                "catalog's model (check model.name in the config and the tarball's sha256)" % (field, got, want))


def map_config(original: dict, target: str, expected: dict | None = None) -> dict:
    """The config.json that makes upstream vLLM serve ``original`` as ``target``.

    ``expected`` (catalog field -> value) is checked first. Raises MappingError naming what is
    missing or inconsistent; never guesses a scale.
    """
    if target not in TARGETS:
        raise MappingError("unknown architecture mapping target %r; known: %s" % (target, ", ".join(sorted(TARGETS))))
    if is_mapped(original):
        raise MappingError("config.json is already a mapped config; map the original (%s)" % ORIGINAL_CONFIG)
    if expected:
        check_shape(original, expected)
    missing = [name for name in _COMMON_FIELDS + TARGETS[target] if name not in original]
    if missing:
        raise MappingError(
            "config.json has no %s, which %s needs; serve this model with a profile whose vLLM knows "
            "its architecture natively" % (", ".join(missing), target))
    for name in TARGETS[target]:
        value = original[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise MappingError("config.json's %s is %r; it must be a positive number" % (name, value))
    hidden, heads = original["hidden_size"], original["num_attention_heads"]
    head_dim = original.get("head_dim")
    # vLLM's MiniCPM derives the head size from hidden_size / heads and ignores head_dim.
    if hidden % heads or (head_dim is not None and head_dim != hidden // heads):
        raise MappingError("config.json's head_dim %r is not hidden_size / num_attention_heads (%d / %d), "
                           "which %s assumes" % (head_dim, hidden, heads, target))
    act = original.get("hidden_act", "silu")
    if act != "silu":
        raise MappingError("config.json's hidden_act is %r; %s's MLP is SwiGLU (silu)" % (act, target))
    mapped = {key: value for key, value in original.items() if key not in _DROPPED_KEYS}
    mapped["architectures"] = [target]
    # A model_type transformers knows without remote code; Llama's config keeps the extra fields.
    mapped["model_type"] = "llama"
    mapped["num_key_value_heads"] = config_value(original, "num_kv_heads")
    mapped["tie_word_embeddings"] = config_value(original, "tie_word_embeddings")
    mapped[MAPPING_KEY] = {
        "from": list(original.get("architectures") or []),
        "from_model_type": original.get("model_type"),
        "to": target,
        "original": ORIGINAL_CONFIG,
    }
    return mapped


def scales(config: dict) -> dict:
    """The three multipliers of MiniCPM-style math, as the served model applies them."""
    layers = config["num_hidden_layers"]
    return {
        "embedding": float(config.get("scale_emb", 1.0)),
        "residual": float(config.get("scale_depth", math.sqrt(layers))) / math.sqrt(layers),
        "logits": float(config.get("dim_model_base", config["hidden_size"])) / float(config["hidden_size"]),
    }
