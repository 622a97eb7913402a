"""`fm9g-deploy verify` on the deployed sandbox: Molecule's verify step.

pytest runs the integration files in name order, so this one comes after test_provision.py and
test_serve.py (converge, idempotence) and before the session's teardown (destroy). Here: verify
passes on both hosts; then one thing at a time is broken on host2 (host1 is left alone), verify
must fail exactly the matching check(s) with the right one-line reason, and the break is undone
before the next test. The last test proves host2 is as deploy left it (a deploy changes nothing).
"""

import re
import time
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import run_cli
from tests.integration.conftest import parse_changed

HOST = "host2"
KEY_FILE = "/etc/fm9g/api-key.env"
MODEL_DIR = "/opt/fm9g/models/tiny-random/current"
#: Everything but the env checks (importing vLLM is the slow part and no break touches the env).
NOT_ENV = "not test_env"


def verify(inventory, tmp_path, *args, name="verify"):
    """Run the CLI; return (process, {testcase name: {outcome, message, out}}) from its JUnit file."""
    junit = tmp_path / f"{name}.xml"
    private_tmp = tmp_path / f"{name}-tmp"
    private_tmp.mkdir()
    result = run_cli("verify", "-i", str(inventory), "--junitxml", str(junit), *args,
                     env={"TMPDIR": str(private_tmp)}, timeout=900)
    # The facts file holds the key: nothing of the run may stay behind.
    assert list(private_tmp.iterdir()) == []
    cases = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            problem = case.find("failure") if case.find("failure") is not None else case.find("error")
            outcome = "failed" if problem is not None else "skipped" if case.find("skipped") is not None else "passed"
            noted = problem if problem is not None else case.find("skipped")
            cases[case.get("name")] = {"outcome": outcome, "out": case.findtext("system-out") or "",
                                       "message": noted.get("message", "") if noted is not None else ""}
    return result, cases


def assert_only(result, cases, expected: dict[str, str]):
    """Exactly the checks in ``expected`` fail, each with its reason; every other one passes."""
    failed = {name: case["message"] for name, case in cases.items() if case["outcome"] == "failed"}
    assert set(failed) == set(expected), result.stdout[-3000:] + result.stderr[-1000:]
    for name, reason in expected.items():
        assert re.search(reason, failed[name]), (name, failed[name])
        assert "\n" not in failed[name]
    # Every other check passes, or skips for its stated reason as on the healthy sandbox (no GPU here).
    others = {name: case for name, case in cases.items() if name not in expected}
    assert all(case["outcome"] == "passed" or (case["outcome"] == "skipped" and case["message"])
               for case in others.values())
    assert sum(case["outcome"] == "passed" for case in others.values()) > 15
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"{len(expected)} failed" in result.stdout


@pytest.fixture
def host2(sandbox_hosts, deployed_sandbox):
    return sandbox_hosts[HOST]


def test_verify_passes_on_the_deployed_sandbox(deployed_sandbox, tmp_path):
    inventory, _ = deployed_sandbox
    result, cases = verify(inventory, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 failed" in result.stdout
    # Every check ran on both hosts, per replica where it is about replicas.
    assert len([name for name in cases if "[host1" in name]) == len([name for name in cases if "[host2" in name]) > 30
    assert "test_replica_unit_is_running[host2-replica1]" in cases
    # The sandbox has no GPU: the GPU checks are skipped, with the reason.
    gpu_checks = [case for name, case in cases.items()
                  if name.startswith(("test_torch_sees_the_hosts_gpus[", "test_replica_gpus_are_visible_to_torch["))]
    assert len(gpu_checks) == 6
    assert all(case["outcome"] == "skipped" and "has no NVIDIA GPU" in case["message"] for case in gpu_checks)
    # The systemd service's checks all ran and passed.
    assert all(cases[f"test_replica_unit_is_running[{host}-replica{index}]"]["outcome"] == "passed"
               for host in ("host1", "host2") for index in (0, 1))


def test_stopped_replica_fails_its_unit_check_with_the_journal(deployed_sandbox, host2, tmp_path):
    inventory, _ = deployed_sandbox
    try:
        assert host2.run("systemctl stop fm9g-replica@1").rc == 0
        result, cases = verify(inventory, tmp_path, "--limit", HOST, "-k", NOT_ENV)
    finally:
        host2.run("systemctl start fm9g-replica@1")
        _wait_ready(host2, 8101)
    assert_only(result, cases, {
        "test_replica_unit_is_running[host2-replica1]": r"fm9g-replica@1\.service is inactive \(dead\)",
        "test_replica_listens_on_loopback_only[host2-replica1]": r"nothing listens on port 8101",
        "test_replica_runs_its_spec[host2-replica1]": r"no process listens on port 8101",
    })
    # The gateway kept answering through replica 0; the failure carries replica 1's journal.
    out = cases["test_replica_unit_is_running[host2-replica1]"]["out"]
    assert "journal of fm9g-replica@1.service" in out and "Stopped" in out
    assert "journal of fm9g-replica@1.service on host2" in result.stdout


def test_env_file_readable_by_others_fails_the_permission_check(deployed_sandbox, host2, tmp_path):
    inventory, _ = deployed_sandbox
    try:
        assert host2.run(f"chmod 0644 {KEY_FILE}").rc == 0
        result, cases = verify(inventory, tmp_path, "--limit", HOST, "-k", NOT_ENV)
    finally:
        host2.run(f"chmod 0600 {KEY_FILE}")
    assert_only(result, cases, {
        "test_api_key_file_is_root_only[host2]": r"is root:root 0644; it must be root:root 0600",
    })


def test_missing_model_file_fails_the_model_check(deployed_sandbox, host2, tmp_path):
    inventory, _ = deployed_sandbox
    aside = "/root/fm9g-verify-tokenizer.json"
    try:
        assert host2.run(f"mv {MODEL_DIR}/tokenizer.json {aside}").rc == 0
        result, cases = verify(inventory, tmp_path, "--limit", HOST, "-k", NOT_ENV)
    finally:
        host2.run(f"mv {aside} {MODEL_DIR}/tokenizer.json")
    assert_only(result, cases, {
        "test_model_has_tokenizer_files[host2]": r"has no tokenizer vocabulary",
    })


def test_changed_key_in_the_env_file_fails_the_key_check(deployed_sandbox, host2, tmp_path):
    inventory, _ = deployed_sandbox
    saved = "/root/fm9g-verify-api-key.env"
    try:
        assert host2.run(f"cp -p {KEY_FILE} {saved}").rc == 0
        assert host2.run(f"sed -i 's/^VLLM_API_KEY=.*/VLLM_API_KEY=not-the-deployed-key/' {KEY_FILE}").rc == 0
        result, cases = verify(inventory, tmp_path, "--limit", HOST, "-k", NOT_ENV)
    finally:
        host2.run(f"mv {saved} {KEY_FILE}")
    assert_only(result, cases, {
        "test_api_key_file_holds_the_deployment_key[host2]": r"holds another key than the deployment's",
    })
    # Neither key is ever shown.
    assert "not-the-deployed-key" not in result.stdout + result.stderr


def test_no_matching_check_is_a_user_error(deployed_sandbox, tmp_path):
    inventory, _ = deployed_sandbox
    result, _ = verify(inventory, tmp_path, "--limit", HOST, "-k", "no_such_check")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("fm9g-deploy: error: no check matches -k 'no_such_check'")


def test_host2_is_as_deploy_left_it(deployed_sandbox, tmp_path):
    """Every break above was undone: verify passes on host2 and a deploy there changes nothing."""
    inventory, _ = deployed_sandbox
    result, _ = verify(inventory, tmp_path, "--limit", HOST, "-k", NOT_ENV)
    assert result.returncode == 0, result.stdout[-3000:]
    deploy = run_cli("deploy", "-i", str(inventory), "--limit", HOST, timeout=900)
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    assert parse_changed(deploy.stdout) == {HOST: 0}


def _wait_ready(host, port, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(f"curl -sf -H 'Authorization: Bearer fm9g' http://127.0.0.1:{port}/v1/models").rc == 0:
            return
        time.sleep(3)
    raise AssertionError(f"replica on port {port} did not come back in {timeout} s")
