"""FM9G -> upstream vLLM: the config rewrite, its refusals, and the Ansible module that applies it."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from fm9g_deploy import architecture
from fm9g_deploy.architecture import MAPPING_KEY, ORIGINAL_CONFIG, MappingError, map_config, scales
from fm9g_deploy.catalog import get_model, load_catalog
from fm9g_deploy.tinymodel import build_config
from tests.conftest import PROJECT_ROOT
from tests.unit.ansible_module import run_library_module

TARGET = "MiniCPMForCausalLM"


def fm9g_config(name: str = "tiny-random") -> dict:
    return build_config(get_model(name), bos_id=0, eos_id=2, pad_id=0)


def test_the_mapped_config_names_minicpm_and_keeps_every_scale():
    original = fm9g_config()
    mapped = map_config(original, TARGET, get_model("tiny-random").expected_shape())
    assert mapped["architectures"] == [TARGET] and mapped["model_type"] == "llama"
    assert "auto_map" not in mapped, "no remote code may decide what upstream vLLM loads"
    for field in ("scale_emb", "scale_depth", "dim_model_base", "hidden_size", "num_hidden_layers", "vocab_size"):
        assert mapped[field] == original[field]
    assert mapped["num_key_value_heads"] == 1 and mapped["tie_word_embeddings"] is True
    assert mapped[MAPPING_KEY] == {"from": ["FM9GForCausalLM"], "from_model_type": "fm9g", "to": TARGET,
                                   "original": ORIGINAL_CONFIG}
    assert original["architectures"] == ["FM9GForCausalLM"], "the original is not modified"


def test_mha_and_an_untied_head_map_too():
    mapped = map_config(fm9g_config("tiny-random-mha"), TARGET, get_model("tiny-random-mha").expected_shape())
    assert mapped["num_key_value_heads"] == mapped["num_attention_heads"] == 2
    assert mapped["tie_word_embeddings"] is False


@pytest.mark.parametrize("field", ["scale_emb", "scale_depth", "dim_model_base"])
def test_a_config_without_a_scale_is_refused_not_guessed(field):
    config = fm9g_config()
    del config[field]
    with pytest.raises(MappingError, match=f"no {field}, which {TARGET} needs"):
        map_config(config, TARGET)


@pytest.mark.parametrize("value", [0, -1.4, "1.4", True, float("nan")])
def test_a_scale_must_be_a_positive_number(value):
    config = {**fm9g_config(), "scale_depth": value}
    with pytest.raises(MappingError, match="scale_depth"):
        map_config(config, TARGET)


def test_a_config_of_another_model_is_refused_by_the_catalog_shape():
    with pytest.raises(MappingError, match=r"hidden_size=128 but the catalog.s model has 2560.*not the catalog.s model"):
        map_config(fm9g_config(), TARGET, get_model("fm9g-4b").expected_shape())


def test_head_dim_other_than_hidden_over_heads_is_refused():
    with pytest.raises(MappingError, match="head_dim 32"):
        map_config({**fm9g_config(), "head_dim": 32}, TARGET)


def test_a_non_swiglu_mlp_is_refused():
    with pytest.raises(MappingError, match="hidden_act is 'gelu'"):
        map_config({**fm9g_config(), "hidden_act": "gelu"}, TARGET)


def test_an_already_mapped_config_is_not_mapped_again():
    with pytest.raises(MappingError, match="already a mapped config"):
        map_config(map_config(fm9g_config(), TARGET), TARGET)


def test_unknown_target():
    with pytest.raises(MappingError, match="unknown architecture mapping target 'LlamaForCausalLM'"):
        map_config(fm9g_config(), "LlamaForCausalLM")


def test_scales_as_the_served_model_applies_them():
    assert scales(fm9g_config()) == pytest.approx({"embedding": 12.0, "residual": 0.7, "logits": 0.5})
    assert scales(fm9g_config("tiny-random-mha")) == pytest.approx(
        {"embedding": 8.0, "residual": 1.4 / 3 ** 0.5, "logits": 0.5})


def test_every_scale_of_the_generated_models_is_away_from_one():
    """The proof needs each scale to matter: a scale of 1 could be dropped unseen."""
    for name, spec in load_catalog().items():
        if spec.generated:
            assert all(abs(value - 1.0) > 0.15 for value in scales(fm9g_config(name)).values()), name


def test_catalog_maps_4b_7b_70b_and_not_the_other_wheel_family():
    catalog = load_catalog()
    assert {name for name, spec in catalog.items() if spec.upstream_architecture == TARGET} == {
        "fm9g-4b", "fm9g-7b", "fm9g-70b", "tiny-random", "tiny-random-mha"}
    assert catalog["fm9g-2b"].upstream_architecture is None and catalog["fm9g-8b"].upstream_architecture is None


def test_architecture_module_is_stdlib_only_and_linked_as_module_utils():
    tree = ast.parse(Path(architecture.__file__).read_text())
    imported = {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    link = PROJECT_ROOT / "module_utils" / "fm9g_architecture.py"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == Path(architecture.__file__).resolve()


# -- the Ansible module --------------------------------------------------------------------------

def run_module(args: dict, monkeypatch, capsys, *, check_mode: bool = False) -> dict:
    return run_library_module("fm9g_model_config", args, monkeypatch, capsys, check_mode=check_mode,
                              module_utils={"fm9g_architecture": architecture})[1]


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(fm9g_config(), indent=2))
    return folder


def _snapshot(folder: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_module_maps_keeps_the_original_and_is_idempotent(model_dir, monkeypatch, capsys):
    original = (model_dir / "config.json").read_bytes()
    args = {"model_dir": str(model_dir), "serve_as": TARGET, "expected": get_model("tiny-random").expected_shape()}
    first = run_module(args, monkeypatch, capsys)
    assert first["changed"] is True and first["architecture"] == TARGET
    assert first["original_architecture"] == "FM9GForCausalLM" and first["mapped"] is True
    assert (model_dir / ORIGINAL_CONFIG).read_bytes() == original
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == [TARGET]
    assert oct((model_dir / "config.json").stat().st_mode & 0o777) == "0o644"
    snapshot = _snapshot(model_dir)
    second = run_module(args, monkeypatch, capsys)
    assert second["changed"] is False and _snapshot(model_dir) == snapshot


def test_module_check_mode_reports_and_writes_nothing(model_dir, monkeypatch, capsys):
    snapshot = _snapshot(model_dir)
    result = run_module({"model_dir": str(model_dir), "serve_as": TARGET}, monkeypatch, capsys, check_mode=True)
    assert result["changed"] is True and _snapshot(model_dir) == snapshot


def test_module_native_puts_the_original_back(model_dir, monkeypatch, capsys):
    original = (model_dir / "config.json").read_bytes()
    run_module({"model_dir": str(model_dir), "serve_as": TARGET}, monkeypatch, capsys)
    result = run_module({"model_dir": str(model_dir), "serve_as": "native"}, monkeypatch, capsys)
    assert result["changed"] is True and result["architecture"] == "FM9GForCausalLM"
    assert (model_dir / "config.json").read_bytes() == original and not (model_dir / ORIGINAL_CONFIG).exists()
    assert run_module({"model_dir": str(model_dir), "serve_as": "native"}, monkeypatch, capsys)["changed"] is False


def test_module_refuses_the_wrong_model_and_changes_nothing(model_dir, monkeypatch, capsys):
    snapshot = _snapshot(model_dir)
    result = run_module({"model_dir": str(model_dir), "serve_as": TARGET,
                         "expected": get_model("fm9g-4b").expected_shape()}, monkeypatch, capsys)
    assert result["failed"] is True and "not the catalog's model" in result["msg"]
    assert _snapshot(model_dir) == snapshot


def test_module_refuses_a_mapped_config_whose_original_is_gone(model_dir, monkeypatch, capsys):
    run_module({"model_dir": str(model_dir), "serve_as": TARGET}, monkeypatch, capsys)
    (model_dir / ORIGINAL_CONFIG).unlink()
    result = run_module({"model_dir": str(model_dir), "serve_as": TARGET}, monkeypatch, capsys)
    assert result["failed"] is True and "reinstall the model release" in result["msg"]
