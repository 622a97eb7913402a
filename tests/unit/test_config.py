"""The deployment config: defaults, examples, and one-line errors for every kind of mistake."""

import pytest

from fm9g_deploy.config import DeploymentConfig, default_config_path, load_config, parse_config
from fm9g_deploy.errors import UserError
from tests.conftest import FIXTURES, PROJECT_ROOT, run_cli

BROKEN = FIXTURES / "configs" / "broken"

#: Each broken config, and what its one-line error must name.
EXPECTED = {
    "bad-indentation.yml": "line 3",
    "unclosed-brace.yml": "not valid YAML",
    "top-level-list.yml": "top level must be a mapping",
    "unknown-top-key.yml": "modle: unknown key",
    "unknown-serving-key.yml": "serving.prot: unknown key",
    "port-not-int.yml": "serving.port",
    "port-too-high.yml": "serving.port: must be at most 65535",
    "port-zero.yml": "serving.port: must be at least 1",
    "gpu-util-over-one.yml": "serving.gpu_memory_utilization: must be at most 1",
    "gpu-util-zero.yml": "serving.gpu_memory_utilization: must be more than 0",
    "tp-zero.yml": "serving.tensor_parallel_size: must be at least 1",
    "replicas-negative.yml": "serving.replicas_per_host: must be at least 1",
    "dtype-unknown.yml": "serving.dtype: got 'fp8-ish'",
    "serve-mode-unknown.yml": "serving.serve_mode: got 'kubernetes'",
    "api-key-blank.yml": "serving.api_key: is empty",
    "served-name-space.yml": "serving.served_model_name",
    "model-unknown.yml": "model.name: unknown model 'fm9g-5b'; choose one of fm9g-4b",
    "model-not-mapping.yml": "model:",
    "profile-unknown.yml": "profile: unknown stack profile 'rocm'",
    "mirror-url-scheme.yml": "mirror.url",
    "max-model-len-tiny.yml": "serving.max_model_len: must be at least 16",
    "trust-not-bool.yml": "serving.trust_remote_code",
    "not-utf8.yml": "cannot read config file",
}


def test_corpus_is_complete():
    assert sorted(p.name for p in BROKEN.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_config_gives_one_line_and_exit_2(name):
    result = run_cli("config", "check", "--config", str(BROKEN / name), timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fm9g-deploy: error: ")
    assert EXPECTED[name] in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_config_names_the_fix(tmp_path):
    result = run_cli("config", "check", "--config", str(tmp_path / "nope.yml"), timeout=60)
    assert result.returncode == 2
    assert "not found; pass --config FILE" in result.stderr


def test_example_config_is_valid_and_matches_defaults():
    example = load_config(PROJECT_ROOT / "inventory" / "fm9g.yml")
    assert example == DeploymentConfig()
    assert example.serving.port == 8020 and example.serving.served_model_name == "9g"
    assert example.profile == "cuda121" and example.model.name == "fm9g-4b"


def test_empty_file_means_all_defaults():
    assert parse_config("") == DeploymentConfig()


def test_default_config_path_is_beside_the_inventory(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    assert default_config_path(inventory) == tmp_path / "fm9g.yml"
    assert default_config_path(tmp_path) == tmp_path / "fm9g.yml"


def test_api_key_is_secret_in_repr():
    config = parse_config("serving:\n  api_key: s3cret-value\n")
    assert "s3cret-value" not in repr(config)
    assert config.serving.api_key.get_secret_value() == "s3cret-value"


def test_several_problems_are_counted_in_one_line():
    with pytest.raises(UserError) as caught:
        parse_config("serving:\n  port: 0\n  dtype: nope\n  prot: 1\n")
    message = str(caught.value)
    assert "\n" not in message and "(and 2 more problems)" in message


def test_show_masks_the_key(tmp_path):
    config = tmp_path / "fm9g.yml"
    config.write_text("serving:\n  api_key: s3cret-value\n")
    result = run_cli("config", "show", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3cret-value" not in result.stdout and "api_key: '********'" in result.stdout
