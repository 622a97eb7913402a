"""The recorded run of the transformers runner on a real H100 (tests/fixtures/h100/): CI has no
GPU, so this checks the record of that run, which was made with this repository's runner and
tiny model (see the record's "what")."""

import json

from tests.conftest import FIXTURES

RECORD = json.loads((FIXTURES / "h100" / "transformers_runner.json").read_text("utf-8"))


def test_the_runner_put_the_model_on_the_gpu_in_bfloat16():
    result = RECORD["result"]
    assert RECORD["request"]["device"] == "cuda" and RECORD["request"]["dtype"] == "bfloat16"
    assert "H100" in RECORD["gpu"] and "H100" in result["device"]
    assert result["device_type"] == "cuda"
    assert result["dtype"] == "bfloat16"
    assert result["versions"]["cuda"]


def test_every_prompt_got_its_tokens():
    result = RECORD["result"]
    assert [item["prompt"] for item in result["results"]] == RECORD["request"]["prompts"]
    for item in result["results"]:
        assert item["output_tokens"] == RECORD["request"]["max_tokens"]
        assert item["prompt_tokens"] > 0 and item["text"]
