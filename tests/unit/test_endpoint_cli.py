"""infer / chat / bench refuse bad input with one line and exit 2, before any load is sent."""

import socket

import pytest

from tests.conftest import run_cli


def _closed_port() -> int:
    # A loopback port nobody listens on: bind, read the number, close.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fm9g-deploy: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [["chat", "--message", "hi"], ["bench", "--num-prompts", "2"]])
def test_unreachable_url_is_one_line(command):
    port = _closed_port()
    result = run_cli(*command, "--url", f"http://127.0.0.1:{port}", env={"FM9G_API_KEY": "k"}, timeout=60)
    _one_line_error(result, f"cannot reach http://127.0.0.1:{port}", "check --url")


@pytest.mark.parametrize("command", [["chat", "--message", "hi"], ["bench"]])
def test_not_a_url(command):
    _one_line_error(run_cli(*command, "--url", "127.0.0.1:8020", timeout=60), "is not an http(s) URL")


def test_key_file_contents_never_show(tmp_path):
    key = tmp_path / "key"
    key.write_text("")
    line = _one_line_error(run_cli("chat", "--url", "http://127.0.0.1:1", "--api-key-file", str(key),
                                   "--message", "hi", timeout=60), "is empty")
    assert "fm9g" not in line.split("error:", 1)[1].replace(str(tmp_path), "")


def test_empty_prompts_file_for_bench(tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    _one_line_error(run_cli("bench", "--url", f"http://127.0.0.1:{_closed_port()}", "--prompts-file", str(empty),
                            timeout=60), "has no prompts")


@pytest.mark.parametrize("options, message", [
    (["--concurrency", "0"], "--concurrency 0 must be at least 1"),
    (["--request-rate", "0"], "--request-rate 0 must be above 0"),
    (["--num-prompts", "0"], "--num-prompts 0 must be 1 to"),
    (["--output-len", "0"], "--output-len 0 must be 1 to"),
    (["--input-len", "99999999999"], "--input-len 99999999999 must be 1 to"),
    (["--request-rate", "inf"], "--request-rate inf must be above 0 and at most"),
    (["--request-rate", "nan"], "--request-rate nan must be above 0"),
    (["--timeout", "inf"], "--timeout and --max-duration must be above 0 and at most"),
    (["--max-duration", "nan"], "--timeout and --max-duration must be above 0 and at most"),
    (["--plot", "out.jpg"], "must name a .png file"),
    (["--plot", "/no/such/folder/out.png"], "does not exist"),
])
def test_bench_option_checks(options, message):
    _one_line_error(run_cli("bench", "--url", "http://127.0.0.1:1", *options, timeout=60), message)


@pytest.mark.parametrize("options, message", [
    (["--temperature", "nan"], "--temperature nan must be 0 to"),
    (["--timeout", "inf"], "--timeout inf must be above 0 and at most"),
    (["--max-tokens", "0"], "--max-tokens 0 must be 1 to"),
    (["--max-tokens", "x"], "argument --max-tokens: invalid int value: 'x'; see `fm9g-deploy chat --help`"),
])
def test_chat_option_checks(options, message):
    _one_line_error(run_cli("chat", "--url", "http://127.0.0.1:1", "--message", "hi", *options, timeout=60), message)


@pytest.mark.parametrize("command", [["chat", "--message", "hi"], ["bench"]])
def test_key_on_the_command_line_is_refused(command):
    line = _one_line_error(run_cli(*command, "--url", "http://127.0.0.1:1", "--api-key", "s3cret-on-argv",
                                   timeout=60), "`ps` shows it", "--api-key-file FILE or set FM9G_API_KEY")
    assert "s3cret-on-argv" not in line


@pytest.mark.parametrize("command", [["chat", "--message", "hi"], ["bench", "--num-prompts", "2"]])
def test_non_ascii_key_is_one_line_not_a_unicode_traceback(command):
    """httpx raised UnicodeEncodeError on the Authorization header of a key like this one."""
    result = run_cli(*command, "--url", f"http://127.0.0.1:{_closed_port()}", env={"FM9G_API_KEY": "ключ-9g"},
                     timeout=60)
    line = _one_line_error(result, "the key in FM9G_API_KEY holds a character an HTTP header cannot carry")
    assert "ключ" not in line and "Traceback" not in result.stderr


def test_chat_empty_message():
    _one_line_error(run_cli("chat", "--url", "http://127.0.0.1:1", "--message", " ", timeout=60), "--message is empty")


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    serving:\n      hosts:\n        host1: {ansible_host: 127.0.0.1}\n")
    (tmp_path / "fm9g.yml").write_text("model: {name: tiny-random}\nprofile: cpu\n")
    return path


def test_infer_unknown_host(inventory):
    _one_line_error(run_cli("infer", "-i", str(inventory), "--host", "nohost", "--engine", "vllm",
                            "--prompt", "hi", timeout=60), "host 'nohost' is not in inventory", "has host1")


def test_infer_empty_prompts_file(inventory, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line_error(run_cli("infer", "-i", str(inventory), "--host", "host1", "--engine", "transformers",
                            "--prompts-file", str(empty), timeout=60), "has no prompts")
