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


# -- the input promise, field by field: one bounded line, never a traceback, never the key ----------

def _refusal(text: str) -> str:
    with pytest.raises(UserError) as caught:
        parse_config(text)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 380, message  # the CLI's line is 400 at most
    return message


def _numeric_fields():
    """(section, key) of every int or float field of the config, found by walking the models."""
    import typing

    from pydantic import BaseModel

    found = []
    for section, info in DeploymentConfig.model_fields.items():
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            continue
        for name, field in info.annotation.model_fields.items():
            kinds = {arg for arg in typing.get_args(field.annotation) or (field.annotation,)}
            kinds |= {inner for kind in kinds for inner in typing.get_args(kind)}
            if kinds & {int, float}:
                found.append((section, name))
    return found


def test_numeric_fields_are_found():
    assert {("serving", "cpu_kvcache_space_gib"), ("serving", "port"), ("serving", "max_model_len"),
            ("serving", "gpu_memory_utilization")} <= set(_numeric_fields())


@pytest.mark.parametrize("section, key", _numeric_fields(), ids=lambda v: str(v))
@pytest.mark.parametrize("value", ["1" + "0" * 400, "-1" + "0" * 400, "1.0e+400", ".inf", "-.inf", ".nan",
                                   "1" + "0" * 5000, "1e400"])
def test_every_numeric_field_is_bounded(section, key, value):
    """A huge number gave an OverflowError traceback (max_model_len had no upper bound)."""
    message = _refusal(f"{section}:\n  {key}: {value}\n")
    assert "0" * 40 not in message


@pytest.mark.parametrize("text, expected", [
    ("serving:\n  port: 8000\n  drain_timeout_s: 5\n  port: 8001\n", "line 4: key 'port' is given again (first at line 2)"),
    ("serving: {port: 8000, port: 8001}\n", "key 'port' is given again"),
    ("profile: cpu\nprofile: cuda121\n", "line 2: key 'profile' is given again (first at line 1)"),
    ("model:\n  name: fm9g-4b\nmodel:\n  name: fm9g-7b\n", "line 3: key 'model' is given again"),
])
def test_duplicate_keys_are_refused_not_silently_overwritten(text, expected):
    assert expected in _refusal(text)


def test_alias_bomb_is_refused_in_one_short_line():
    """Nine levels of aliases expanded to a 52 MB "one-line" error."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    message = _refusal("\n".join(lines) + "\nserving: *a9\n")
    assert "line 2: aliases (*a0) are not allowed here" in message


def test_anchors_without_aliases_are_fine():
    assert parse_config("serving: &s\n  port: 8021\n").serving.port == 8021


@pytest.mark.parametrize("text, expected", [
    ("[" * 5000 + "]" * 5000, "nested more than"),
    ("serving:\n  port: 2024-13-45\n", "a value cannot be read (month must be in 1..12)"),
    ("serving:\n  port: 1" + "0" * 5000 + "\n", "a value cannot be read"),
    ("profile: " + "x" * 100_000 + "\n", "profile: unknown stack profile 'xxx"),
    ("mirror:\n  url: http://" + "a" * 5000 + "\n", "mirror.url: is longer than 2048 characters"),
])
def test_odd_documents_are_one_short_line(text, expected):
    assert expected in _refusal(text)


@pytest.mark.parametrize("path", ["opt/fm9g/models", "models", "./models", "~/models", "/opt/../models",
                                  "/opt/fm9g\nmodels"])
def test_host_paths_must_be_absolute_and_plain(path):
    message = _refusal(f"model:\n  install_dir: {json_quoted(path)}\n")
    assert message.startswith("fm9g.yml: model.install_dir: ")
    assert any(why in message for why in ("must be an absolute path", "must not contain '..'", "control"))


def json_quoted(text: str) -> str:
    import json

    return json.dumps(text)


def test_absolute_host_path_is_kept():
    assert parse_config("model:\n  install_dir: /srv/models/\n").model.install_dir == "/srv/models/"


SECRET = "s3cretKEYvalue"


@pytest.mark.parametrize("bad_key", [f"{SECRET}\nmore", f"{SECRET} with space", f"ключ{SECRET}", f"{SECRET}\"quote",
                                     f"{{{{ {SECRET} }}}}", SECRET * 100])
def test_no_message_quotes_the_api_key(bad_key):
    """pydantic's errors carry input_value: a refused key was echoed to the terminal and CI logs."""
    message = _refusal(f"serving:\n  api_key: {json_quoted(bad_key)}\n")
    assert message.startswith("fm9g.yml: serving.api_key: ")
    assert SECRET not in message and "ключ" not in message


@pytest.mark.parametrize("text", [
    f"serving:\n  api_key: [{SECRET}]\n",
    f"serving:\n  api_key: {{k: {SECRET}}}\n",
    f"serving: 'api_key: {SECRET}'\n",
    f"serving:\n  api_key: {SECRET}\n  port: 0\n",
    f"serving:\n  api_key: {SECRET}\n  dtype: {SECRET}\n",
])
def test_no_message_quotes_the_api_key_whatever_else_is_wrong(text):
    assert SECRET not in _refusal(text)


def test_api_key_file_must_exist_and_be_readable(tmp_path):
    """`config check` passed with an api_key_file that did not exist; deploy failed later."""
    missing = tmp_path / "missing.key"
    assert f"serving.api_key_file: '{missing}' does not exist" in _refusal(f"serving:\n  api_key_file: {missing}\n")
    assert "is not a file" in _refusal(f"serving:\n  api_key_file: {tmp_path}\n")
    bad = tmp_path / "bad.key"
    bad.write_text(f"{SECRET} ключ\n")
    message = _refusal(f"serving:\n  api_key_file: {bad}\n")
    assert f"the key in '{bad}' may hold only ASCII letters" in message and SECRET not in message
    good = tmp_path / "good.key"
    good.write_text(f"{SECRET}\n")
    assert parse_config(f"serving:\n  api_key_file: {good}\n").serving.api_key_file == good
    assert "keep one of them" in _refusal(f"serving:\n  api_key: {SECRET}\n  api_key_file: {good}\n")


def test_unreadable_api_key_file(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    key = tmp_path / "root-only.key"
    key.write_text("k3y\n")
    key.chmod(0)
    assert "cannot read it (Permission denied)" in _refusal(f"serving:\n  api_key_file: {key}\n")


def test_config_check_reads_the_key_file_without_printing_it(tmp_path):
    key = tmp_path / "key"
    key.write_text(f"{SECRET}\n")
    config = tmp_path / "fm9g.yml"
    config.write_text(f"serving:\n  api_key_file: {key}\n")
    from fm9g_deploy.cli import main

    assert main(["config", "check", "--config", str(config)]) == 0
    key.unlink()
    assert main(["config", "check", "--config", str(config)]) == 2


PORT_CLASHES = [
    ("serving:\n  port: 8100\n", "port 8100 is also replica_base_port"),
    ("serving:\n  port: 8101\n  replicas_per_host: 2\n", "replica ports 8100-8101 include the gateway's port 8101"),
    ("serving:\n  replica_base_port: 65535\n  replicas_per_host: 2\n", "run past port 65535"),
]


@pytest.mark.parametrize("text, expected", PORT_CLASHES)
def test_port_clashes_are_caught_by_config_check_as_by_plan(tmp_path, capsys, text, expected):
    """`plan` refused two replicas (or a replica and the gateway) on one port; `config check` passed."""
    from fm9g_deploy.cli import main

    config = tmp_path / "fm9g.yml"
    config.write_text(text)
    assert main(["plan", "--config", str(config), "--gpus", "2xH100"]) == 2
    assert main(["config", "check", "--config", str(config)]) == 2
    assert expected in capsys.readouterr().err.splitlines()[-1]


def test_ports_that_do_not_clash_pass():
    config = parse_config("serving:\n  port: 8099\n  replica_base_port: 8100\n  replicas_per_host: 4\n")
    assert config.serving.port == 8099


def test_oversized_config_file_is_refused_unread(tmp_path):
    big = tmp_path / "fm9g.yml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(UserError, match="is larger than 1024 KiB"):
        load_config(big)
