"""Sandbox commands fail with one clear line when the Docker engine is not there."""

from tests.conftest import run_cli


def test_engine_not_running_is_one_line(tmp_path):
    result = run_cli("sandbox", "status", env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "the Docker engine is not reachable" in lines[0] and "make deps" in lines[0]


def test_hosts_out_of_range_is_refused(tmp_path):
    result = run_cli("sandbox", "up", "--hosts", "0", env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}, timeout=60)
    assert result.returncode == 2
    assert "--hosts 0 is out of range" in result.stderr


def test_up_help_documents_the_gateway_host():
    result = run_cli("sandbox", "up", "--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--gateway" in text and "--no-gateway" in text
    assert "gw1" in text and "left as it is" in text
