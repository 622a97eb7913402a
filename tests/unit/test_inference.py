"""`fm9g-deploy infer`'s own logic: prompts, the profile's engine options, the runner's report."""

import argparse
import ast

import pytest

from fm9g_deploy.config import parse_config
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.inference import build_request, check_host, engine_kwargs, parse_report, read_prompts
from fm9g_deploy.runners import RUNNERS_DIR, runner_script

INVENTORY = """\
all:
  children:
    serving:
      hosts:
        host1: {ansible_host: 127.0.0.1}
        host2: {ansible_host: 127.0.0.1}
"""


def test_runners_parse_as_python_3_10():
    # The cuda121 profile's env runs Python 3.10: no newer syntax in what runs there.
    for path in sorted(RUNNERS_DIR.glob("*_runner.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    assert runner_script("vllm").name == "vllm_runner.py"


def test_prompts_from_options_and_limits(tmp_path):
    assert read_prompts(["  你是谁？ ", "hi"], None, 10) == ["你是谁？", "hi"]
    with pytest.raises(UserError, match="--prompt is empty"):
        read_prompts(["ok", "  "], None, 10)
    with pytest.raises(UserError, match="more than 2"):
        read_prompts(["a", "b", "c"], None, 2)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(UserError, match="has no prompts"):
        read_prompts(None, empty, 10)


@pytest.mark.parametrize("args, expected", [
    ([], {}),
    (["--enforce-eager"], {"enforce_eager": True}),
    (["--max-num-seqs", "8", "--enforce-eager"], {"max_num_seqs": 8, "enforce_eager": True}),
    (["--swap-space=4.5", "--kv-cache-dtype fp8"], {"swap_space": 4.5, "kv_cache_dtype": "fp8"}),
])
def test_profile_vllm_args_become_llm_keywords(args, expected):
    assert engine_kwargs(args) == expected


def test_profile_vllm_args_must_be_flags():
    with pytest.raises(UserError, match="not a --flag"):
        engine_kwargs(["enforce-eager"])


def test_check_host_names_the_known_hosts(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(INVENTORY)
    check_host(inventory, "host1")
    with pytest.raises(UserError, match=r"host 'host9' is not in inventory .*it has host1, host2"):
        check_host(inventory, "host9")


def _args(**overrides):
    values = dict(engine="transformers", host="host1", max_tokens=None, temperature=None, top_p=None,
                  seed=None, timeout=1800)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_transformers_request_follows_the_guide(tmp_path):
    config = parse_config("model: {name: tiny-random}\nprofile: cpu\n")
    request = build_request(_args(), config, tmp_path / "hosts.yml", ["你是谁？"])
    assert request.engine == "transformers"
    assert request.python == "/opt/fm9g/envs/fm9g-cpu/bin/python"
    assert request.payload == {
        "model_dir": "/opt/fm9g/models/tiny-random/current", "prompts": ["你是谁？"],
        "max_tokens": 256, "temperature": None, "top_p": None, "seed": None, "trust_remote_code": True,
    }


@pytest.mark.parametrize("overrides, message", [
    ({"max_tokens": 0}, "--max-tokens 0 must be 1 to"),
    ({"max_tokens": 10**30}, "--max-tokens 1000000000000000000000000000000 must be 1 to"),
    ({"temperature": -1.0}, "--temperature -1 must be 0 to 100"),
    ({"temperature": float("nan")}, "--temperature nan must be 0 to 100"),
    ({"top_p": 1.5}, "--top-p 1.5 must be above 0"),
    ({"seed": 2**64}, "--seed 18446744073709551616 must be 0 to"),
    ({"timeout": 1}, "--timeout 1 must be 10 to"),
    ({"timeout": 10**12}, "--timeout 1000000000000 must be 10 to"),
])
def test_bad_sampling_options_are_refused(tmp_path, overrides, message):
    config = parse_config("model: {name: tiny-random}\nprofile: cpu\n")
    with pytest.raises(UserError, match=message):
        build_request(_args(**overrides), config, tmp_path / "hosts.yml", ["x"])


RESULT = '{"engine": "vllm", "device": "cpu", "dtype": "bfloat16", "results": [{"prompt": "p", "text": "t"}]}'


def test_report_of_a_good_run_is_the_runner_result():
    report = {"rc": 0, "stdout": RESULT + "\n", "stderr": "INFO loading\n"}
    assert parse_report("host1", "vllm", report, 60)["results"] == [{"prompt": "p", "text": "t"}]


def test_report_of_a_failed_run_quotes_the_runner_error_line():
    stderr = ("Traceback (most recent call last):\n  ...\nValueError: boom\n"
              "fm9g-runner: error: ValueError: max_tokens too big\n")
    with pytest.raises(OperationFailed, match=r"^vllm inference on host1 failed: ValueError: max_tokens too big$"):
        parse_report("host1", "vllm", {"rc": 1, "stdout": "", "stderr": stderr}, 60)


def test_report_of_a_crash_quotes_the_last_stderr_line():
    with pytest.raises(OperationFailed, match="failed: Segmentation fault"):
        parse_report("host1", "vllm", {"rc": 139, "stdout": "", "stderr": "x\nSegmentation fault\n"}, 60)


@pytest.mark.parametrize("rc", [124, 137])
def test_report_of_a_timeout_says_so(rc):
    with pytest.raises(OperationFailed, match="did not finish within 60 s; raise --timeout"):
        parse_report("host1", "transformers", {"rc": rc, "stdout": "", "stderr": ""}, 60)


def test_report_without_a_result_line():
    with pytest.raises(OperationFailed, match="printed no result"):
        parse_report("host1", "transformers", {"rc": 0, "stdout": "not json", "stderr": "hm"}, 60)


def test_report_of_an_unprovisioned_host_says_what_to_run():
    report = {"missing": ["/opt/fm9g/models/fm9g-4b/current/config.json"], "rc": None, "stdout": "", "stderr": ""}
    with pytest.raises(UserError, match=r"host1 has no /opt/fm9g/models/fm9g-4b/current/config.json; "
                                        r"run `fm9g-deploy provision`"):
        parse_report("host1", "vllm", report, 60)
