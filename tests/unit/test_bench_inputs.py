"""What chat and bench take from the operator: URLs, API keys, prompt files."""

import argparse
import json

import pytest

from fm9g_deploy.bench.endpoint import API_KEY_ENV, api_key_from, base_url
from fm9g_deploy.bench.workload import generated_prompts, load_prompts_file, take
from fm9g_deploy.errors import UserError


@pytest.mark.parametrize("typed, expected", [
    ("http://127.0.0.1:8020", "http://127.0.0.1:8020"),
    ("http://127.0.0.1:8020/", "http://127.0.0.1:8020"),
    ("http://127.0.0.1:8020/v1", "http://127.0.0.1:8020"),
    (" https://gw.example:443/fm9g/v1/ ", "https://gw.example:443/fm9g"),
])
def test_base_url_accepts_what_operators_type(typed, expected):
    assert base_url(typed) == expected


@pytest.mark.parametrize("typed", ["127.0.0.1:8020", "ftp://host/", "http://", "localhost"])
def test_base_url_refuses_non_http(typed):
    with pytest.raises(UserError, match="is not an http"):
        base_url(typed)


def _key_args(api_key=None, api_key_file=None):
    return argparse.Namespace(api_key=api_key, api_key_file=api_key_file)


def test_key_on_the_command_line_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    with pytest.raises(UserError, match="`ps` shows it to every user; pass --api-key-file FILE or set FM9G_API_KEY"):
        api_key_from(_key_args(api_key="from-flag"))


@pytest.mark.parametrize("key", ["ключ", "tab\there", "bell\x07", "x" * 2000])
def test_key_an_http_header_cannot_carry_is_refused_without_showing_it(tmp_path, monkeypatch, key):
    monkeypatch.setenv(API_KEY_ENV, key)
    with pytest.raises(UserError, match=f"the key in {API_KEY_ENV} ") as from_env:
        api_key_from(_key_args())
    path = tmp_path / "key"
    path.write_text(key + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="the key in --api-key-file") as from_file:
        api_key_from(_key_args(api_key_file=path))
    for caught in (from_env, from_file):
        assert key not in str(caught.value)


def test_key_from_file_is_stripped(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    path = tmp_path / "key"
    path.write_text("from-file\n")
    assert api_key_from(_key_args(api_key_file=path)) == "from-file"


def test_key_from_env_then_none(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, " from-env ")
    assert api_key_from(_key_args()) == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    assert api_key_from(_key_args()) is None


def test_empty_or_missing_key_file_is_a_user_error_that_hides_nothing_secret(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="is empty"):
        api_key_from(_key_args(api_key_file=empty))
    with pytest.raises(UserError, match="cannot read it"):
        api_key_from(_key_args(api_key_file=tmp_path / "absent"))
    undecodable = tmp_path / "binary"
    undecodable.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="is not a text file"):
        api_key_from(_key_args(api_key_file=undecodable))


def test_prompts_file_one_per_line_skips_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("你是谁？\n\n  山东最高的山是？  \n\n")
    assert load_prompts_file(path) == ["你是谁？", "山东最高的山是？"]


def test_prompts_file_jsonl_reads_the_prompt_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in
                              [{"prompt": "a\nmultiline prompt", "id": 1}, {"prompt": "介绍一下"}]))
    assert load_prompts_file(path) == ["a\nmultiline prompt", "介绍一下"]


@pytest.mark.parametrize("name, text, message", [
    ("empty.txt", "", "has no prompts"),
    ("blank.txt", "\n  \n\t\n", "has no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\nnot json\n', "line 2: not JSON"),
    ("noprompt.jsonl", '{"text": "x"}\n', 'line 1: needs a "prompt" string'),
    ("emptyprompts.jsonl", '{"prompt": "  "}\n', "has no prompts"),
])
def test_bad_prompts_files_are_one_line_user_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message) as caught:
        load_prompts_file(path)
    assert "\n" not in str(caught.value)


def test_missing_and_binary_prompts_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_prompts_file(tmp_path / "absent.txt")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="UTF-8"):
        load_prompts_file(binary)


def test_generated_prompts_are_fixed_by_the_seed():
    prompts = generated_prompts(4, 10, seed=3)
    assert len(prompts) == 4 and all(len(p.split()) == 10 for p in prompts)
    assert prompts == generated_prompts(4, 10, seed=3)
    assert prompts != generated_prompts(4, 10, seed=4)


def test_take_cycles_through_the_prompts():
    assert take(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


@pytest.mark.parametrize("typed", ["HTTP://¡", "http://[::1", "http://host:99999", "http://ex\u2100mple.com",
                                   "http://a b:80", "http://host\x00/", "http://host/\x00"])
def test_base_url_refuses_what_the_http_clients_cannot_parse(typed):
    """These raised httpx.InvalidURL or ValueError as a traceback (found by test_input_promise)."""
    with pytest.raises(UserError, match="is not an http"):
        base_url(typed)
