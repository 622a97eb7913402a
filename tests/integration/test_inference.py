"""The guide's three ways, against the deployed sandbox (host1 only): offline inference on the host
with transformers and with vLLM, the streaming chat client, and the load generator's figures.
Nothing here changes the deployment."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fm9g_deploy.commands.chat import ChatSession
from tests.conftest import PROJECT_ROOT, run_cli

HOST = "host1"
KEY = "fm9g"
KEY_ENV = {"FM9G_API_KEY": KEY}
GUIDE_PROMPTS = ["你是谁？", "山东最高的山是？", "介绍一下大模型的旋转位置编码。"]


@pytest.fixture(scope="module")
def gateway(deployed_sandbox) -> str:
    return deployed_sandbox[1][HOST]


@pytest.fixture(scope="module")
def inventory(deployed_sandbox):
    return deployed_sandbox[0]


def _json(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fm9g-deploy: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- infer: the guide's offline ways, on the host, in its env, with its model ---------------------

def test_infer_transformers_follows_the_guide(inventory):
    report = _json(run_cli("infer", "-i", str(inventory), "--host", HOST, "--engine", "transformers",
                           *(arg for p in GUIDE_PROMPTS[:2] for arg in ("--prompt", p)),
                           "--max-tokens", "8", "--json", timeout=600))
    assert report["host"] == HOST and report["engine"] == "transformers"
    assert report["device"] == "cpu" and report["device_type"] == "cpu"
    assert report["dtype"] == "bfloat16"  # the checkpoint's own dtype on a CPU
    assert report["sampling"] == {"max_new_tokens": 8}  # greedy, as the guide's script
    assert [item["prompt"] for item in report["results"]] == GUIDE_PROMPTS[:2]
    for item in report["results"]:
        assert 1 <= item["output_tokens"] <= 8 and item["prompt_tokens"] > 3  # chat template applied


def test_infer_vllm_batch_with_the_plan_and_guide_sampling(inventory, sandbox_hosts, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in GUIDE_PROMPTS))
    report = _json(run_cli("infer", "-i", str(inventory), "--host", HOST, "--engine", "vllm",
                           "--prompts-file", str(prompts), "--max-tokens", "12", "--seed", "1", "--json",
                           timeout=900))
    assert report["engine"] == "vllm" and report["device"] == "cpu"
    assert report["tensor_parallel_size"] == 1  # the planner's TP for a CPU host
    assert report["sampling"] == {"max_tokens": 12, "temperature": 0.8, "top_p": 0.95, "seed": 1}
    assert [item["prompt"] for item in report["results"]] == GUIDE_PROMPTS
    for item in report["results"]:
        assert 1 <= item["output_tokens"] <= 12 and item["prompt_tokens"] > 3
    # Nothing left behind: no work directory, no IPC socket of vLLM's (replicas keep theirs private).
    leftovers = sandbox_hosts[HOST].run(r"find /tmp -maxdepth 1 \( -name 'fm9g-infer-*' -o -type s \)")
    assert leftovers.rc == 0 and leftovers.stdout.strip() == ""


def test_infer_text_output(inventory):
    result = run_cli("infer", "-i", str(inventory), "--host", HOST, "--engine", "transformers",
                     "--prompt", "hello", "--max-tokens", "4", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{HOST}: transformers on cpu (bfloat16)")
    assert "[1] hello" in result.stdout


# -- chat: the guide's streaming, multi-turn client ---------------------------------------------

class _Recorder:
    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


def test_chat_streams_and_keeps_the_conversation(gateway):
    session = ChatSession(gateway, KEY, "9g", max_tokens=12, temperature=0)
    session.check_endpoint()
    out = _Recorder()
    first = session.send("介绍一下大语言模型的旋转位置编码", out)
    assert len(out.writes) > 2  # several chunks, then the newline: it streamed
    assert "".join(out.writes) == first + "\n"
    session.send("再详细一点", _Recorder())
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == first


def test_chat_message_one_shot(gateway):
    result = run_cli("chat", "--url", gateway, "--message", "你好", "--max-tokens", "8", env=KEY_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert KEY not in result.stdout + result.stderr


def test_interactive_chat_two_turns_then_quit(gateway):
    options = ["--url", gateway, "--max-tokens", "8", "--temperature", "0"]
    one_shot = run_cli("chat", *options, "--message", "hi", env=KEY_ENV, timeout=120)
    assert one_shot.returncode == 0, one_shot.stderr
    # stdin stays open after `quit`: the chat must end on the word, not on end of input.
    chat = subprocess.Popen([sys.executable, "-m", "fm9g_deploy", "chat", *options], cwd=PROJECT_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **KEY_ENV})
    try:
        chat.stdin.write("hi\n再说一遍\nquit\n")
        chat.stdin.flush()
        chat.wait(timeout=120)
        stdout, stderr = chat.stdout.read(), chat.stderr.read()
    finally:
        chat.kill()
        chat.stdin.close()
    assert chat.returncode == 0, stderr
    assert "Type 'quit'" in stderr
    # Greedy: the first turn answers as the one-shot did; a second answer follows it (the tiny
    # model's greedy answer may be whitespace: more than the bare line end of an empty answer).
    assert stdout.startswith(one_shot.stdout)
    assert len(stdout) - len(one_shot.stdout) >= 2, repr(stdout)


# -- bench: a bounded load with vLLM's figures --------------------------------------------------

def test_bench_json_figures_are_sane(gateway, tmp_path):
    plot = tmp_path / "bench.png"
    plotting = ["--plot", str(plot)] if _has_matplotlib() else []
    report = _json(run_cli("bench", "--url", gateway, "--num-prompts", "8", "--concurrency", "2",
                           "--input-len", "32", "--output-len", "16", "--warmup", "2", "--json", *plotting,
                           env=KEY_ENV, timeout=300))
    assert report["completed"] == 8 and report["failed"] == 0 and report["errors"] == {}
    assert report["total_output_tokens"] == 8 * 16  # ignore_eos: exactly --output-len each
    assert 8 * 16 <= report["total_input_tokens"] <= 8 * 64  # about --input-len
    assert report["output_throughput"] == pytest.approx(report["total_output_tokens"] / report["duration_s"])
    assert report["request_throughput"] == pytest.approx(8 / report["duration_s"])
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        figures = report[key]
        assert 0 <= figures["p50"] <= figures["p90"] <= figures["p99"], (key, figures)
        assert figures["mean"] >= 0
    assert 0 < report["ttft_ms"]["mean"] <= report["e2el_ms"]["mean"]
    if plotting:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_request_rate_and_prompts_file(gateway, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(GUIDE_PROMPTS) + "\n")
    result = run_cli("bench", "--url", gateway, "--prompts-file", str(prompts), "--num-prompts", "6",
                     "--request-rate", "20", "--output-len", "8", env=KEY_ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Successful requests" in result.stdout and "TTFT" in result.stdout


# -- bad input: one line, exit 2 ----------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", [["chat", "--message", "hi"], ["bench", "--num-prompts", "2", "--output-len", "4"]],
                         ids=["chat", "bench"])
def test_bad_endpoint_input_is_one_line(gateway, tmp_path, command):
    port = _closed_port()
    _one_line_error(run_cli(*command, "--url", f"http://127.0.0.1:{port}", env=KEY_ENV, timeout=60),
                    f"cannot reach http://127.0.0.1:{port}")
    wrong = run_cli(*command, "--url", gateway, env={"FM9G_API_KEY": "not-the-key"}, timeout=60)
    _one_line_error(wrong, "rejected the API key (401)")
    assert "not-the-key" not in wrong.stderr
    _one_line_error(run_cli(*command, "--url", gateway, "--model", "no-such-model", env=KEY_ENV, timeout=60),
                    "does not serve a model named 'no-such-model'", "9g")


def test_empty_prompts_file_is_one_line(inventory, gateway, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    _one_line_error(run_cli("bench", "--url", gateway, "--prompts-file", str(empty), env=KEY_ENV, timeout=60),
                    "has no prompts")
    _one_line_error(run_cli("infer", "-i", str(inventory), "--host", HOST, "--engine", "vllm",
                            "--prompts-file", str(empty), timeout=60), "has no prompts")


def test_infer_on_a_host_without_the_model_says_what_to_run(inventory, tmp_path):
    other = tmp_path / "fm9g.yml"  # a deployment of a model the sandbox never installed
    other.write_text("model: {name: fm9g-4b}\nprofile: cpu\n")
    _one_line_error(run_cli("infer", "-i", str(inventory), "--config", str(other), "--host", HOST,
                            "--engine", "transformers", "--prompt", "hi", timeout=120),
                    "/opt/fm9g/models/fm9g-4b/current/config.json", "run `fm9g-deploy provision`")


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
