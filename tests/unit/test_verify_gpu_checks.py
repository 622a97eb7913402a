"""The verify suite's live GPU checks, run for real against this machine as the host `gpu1`.

The suite runs as `fm9g-deploy verify` runs it (pytest in a subprocess, the facts in a private
file, the outcomes in the --fm9g-report JSON), over testinfra's Ansible backend with a local
connection: `ss`, /proc and the shell are this machine's. Two test doubles stand in for what this
machine cannot have: nvidia-smi (tests/fixtures/nvidia-smi/nvidia-smi-double.sh, replaying saved
output) and the replica (tests/doubles/fake_vllm_server.py, a stand-in HTTP server started with the
environment each case gives it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fm9g_deploy.ansible import ansible_env
from fm9g_deploy.verification import SUITE_DIR, pytest_argv
from fm9g_deploy.verify_suite.facts import FACTS_ENV, DeploymentFacts, HostFacts, LockedPackage, write_facts
from fm9g_deploy.verify_suite.support import main_process, runs_api_server
from tests.conftest import FIXTURES, PROJECT_ROOT

KEY = "unit-test-key-7d41b9e0"
HOST = "gpu1"
CHECKS = "test_replica_process_has_its_gpus or test_live_gpus_match_the_plan"
PROCESS_CHECK = f"test_replica_process_has_its_gpus[{HOST}-replica0]"
LIVE_CHECK = f"test_live_gpus_match_the_plan[{HOST}]"
SMI_DOUBLE = FIXTURES / "nvidia-smi" / "nvidia-smi-double.sh"
#: Real nvidia-smi output of one H100.
ONE_H100 = FIXTURES / "nvidia-smi" / "h100-80gb"
REPLICA_DOUBLE = PROJECT_ROOT / "tests" / "doubles" / "fake_vllm_server.py"
SUITE_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_h100(tmp_path) -> Path:
    """nvidia-smi double output for two H100s: the real capture's GPU and a second one beside it
    (its own index, uuid and bus id)."""
    folder = tmp_path / "two-h100"
    folder.mkdir()
    (line,) = (ONE_H100 / "query-gpu.csv").read_text().splitlines()
    cells = [cell.strip() for cell in line.split(",")]
    second = ["1", cells[1][:-4] + "0001", *cells[2:7], "00000000:00:07.0", cells[8]]
    (folder / "query-gpu.csv").write_text(f"{line}\n{', '.join(second)}\n")
    return folder


@pytest.fixture
def smi_bin(tmp_path) -> Path:
    """A folder whose `nvidia-smi` is the double; put first on the suite's PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "nvidia-smi").symlink_to(SMI_DOUBLE)
    return folder


@pytest.fixture
def replica_double():
    """Start the replica double on a port with the environment given; stopped at teardown."""
    started: list[subprocess.Popen] = []

    def start(port: int, **variables: str) -> subprocess.Popen:
        env = {name: value for name, value in os.environ.items()
               if name not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
        env.update(variables, VLLM_API_KEY=KEY)
        process = subprocess.Popen([sys.executable, str(REPLICA_DOUBLE), "--port", str(port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the replica double exited with {process.returncode}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the replica double does not listen on port {port}")

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _facts(tmp_path: Path, port: int, *, gpu_count: int = 2, gpus=(0, 1), accelerator: str = "cuda",
           serve_mode: str = "systemd") -> DeploymentFacts:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"[serving]\n{HOST} ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return DeploymentFacts(
        inventory=str(inventory), profile="cuda121", python="3.11", env_prefix=str(tmp_path / "env"), excluded=[],
        lock_sha256="", packages={r: LockedPackage(r, "1.0") for r in ("torch", "transformers", "vllm")},
        model_name="tiny-random", model_root=str(tmp_path / "models"), model_current=str(tmp_path / "models/current"),
        model_sha256="ab" * 32, served_model_name="9g", gateway_port=18020, config_dir=str(tmp_path / "etc"),
        hosts={HOST: HostFacts(name=HOST, gateway_url="http://127.0.0.1:9", accelerator=accelerator,
                               gpu_count=gpu_count,
                               replicas=[{"index": 0, "port": port, "gpus": list(gpus),
                                          "tensor_parallel_size": len(gpus) or 1, "max_model_len": 4096,
                                          "gpu_memory_utilization": 0.9}])},
        api_key=KEY, serve_mode=serve_mode)


def run_gpu_checks(facts: DeploymentFacts, tmp_path: Path, smi_bin: Path, smi_dir: Path) -> dict[str, dict]:
    """Run the suite's test_gpu.py for the new checks as `fm9g-deploy verify` runs the suite."""
    private = tmp_path / "run"
    private.mkdir()
    facts_file = write_facts(facts, private / "facts.json")
    report = private / "report.json"
    argv = pytest_argv(report, junitxml=None, keyword=CHECKS, verbose=False)
    suite_at = len(argv) - 1 - argv[::-1].index(str(SUITE_DIR))  # the target (the other is --rootdir)
    argv[suite_at] = str(SUITE_DIR / "test_gpu.py")
    env = {**os.environ, **ansible_env(), FACTS_ENV: str(facts_file), "FM9G_NVIDIA_SMI_DOUBLE_DIR": str(smi_dir),
           "PATH": os.pathsep.join([str(smi_bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(argv, env=env, cwd=private, capture_output=True, text=True, timeout=SUITE_SECONDS,
                          check=False)
    assert report.is_file(), done.stdout + done.stderr
    text = report.read_text(encoding="utf-8")
    assert KEY not in text and KEY not in done.stdout and KEY not in done.stderr
    results = {r["nodeid"].split("::")[1]: r for r in json.loads(text)["results"]}
    assert done.returncode == (1 if any(r["outcome"] == "failed" for r in results.values()) else 0), done.stdout
    return results


def _outcomes(results: dict[str, dict]) -> dict[str, tuple[str, str]]:
    return {name: (r["outcome"], r["reason"]) for name, r in results.items()}


# -- the replica's process ----------------------------------------------------------------------

def test_a_replica_with_its_planned_gpus_passes(tmp_path, smi_bin, two_h100, replica_double):
    port = _free_port()
    replica_double(port, CUDA_VISIBLE_DEVICES="0,1", CUDA_DEVICE_ORDER="PCI_BUS_ID")
    results = run_gpu_checks(_facts(tmp_path, port), tmp_path, smi_bin, two_h100)
    assert _outcomes(results) == {PROCESS_CHECK: ("passed", ""), LIVE_CHECK: ("passed", "")}
    assert results[PROCESS_CHECK]["check"] == "the running replica sees exactly its planned GPUs"
    assert results[LIVE_CHECK]["check"] == "nvidia-smi on the host shows the GPUs the plan was made for"


def test_a_replica_without_cuda_visible_devices_fails(tmp_path, smi_bin, two_h100, replica_double):
    port = _free_port()
    replica = replica_double(port, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    results = run_gpu_checks(_facts(tmp_path, port), tmp_path, smi_bin, two_h100)
    assert _outcomes(results)[PROCESS_CHECK] == (
        "failed", f"replica 0 (port {port}, pid {replica.pid}) runs without CUDA_VISIBLE_DEVICES: "
                  "it would use every GPU of the host")
    assert results[LIVE_CHECK]["outcome"] == "passed"


@pytest.mark.parametrize("visible, shown", [("1,0", "1,0"), ("0", "0"), ("", "(empty)")])
def test_a_replica_with_other_gpus_fails(tmp_path, smi_bin, two_h100, replica_double, visible, shown):
    port = _free_port()
    replica = replica_double(port, CUDA_VISIBLE_DEVICES=visible, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    results = run_gpu_checks(_facts(tmp_path, port), tmp_path, smi_bin, two_h100)
    assert _outcomes(results)[PROCESS_CHECK] == (
        "failed", f"replica 0 (port {port}, pid {replica.pid}) runs with CUDA_VISIBLE_DEVICES={shown}, "
                  "the plan gives it GPU(s) 0,1")


def test_a_replica_without_pci_bus_order_fails(tmp_path, smi_bin, two_h100, replica_double):
    port = _free_port()
    replica = replica_double(port, CUDA_VISIBLE_DEVICES="0,1")
    results = run_gpu_checks(_facts(tmp_path, port), tmp_path, smi_bin, two_h100)
    outcome, reason = _outcomes(results)[PROCESS_CHECK]
    assert outcome == "failed"
    assert reason.startswith(f"replica 0 (port {port}, pid {replica.pid}) runs with no CUDA_DEVICE_ORDER, "
                             "not PCI_BUS_ID: ")


def test_nothing_listening_on_the_replica_port_fails_with_the_journal(tmp_path, smi_bin, two_h100):
    port = _free_port()
    results = run_gpu_checks(_facts(tmp_path, port), tmp_path, smi_bin, two_h100)
    assert _outcomes(results)[PROCESS_CHECK] == ("failed", f"no process listens on port {port}: is replica 0 running?")
    assert list(results[PROCESS_CHECK]["journal"]) == ["fm9g-replica@0.service"]


def test_the_process_check_leaves_containers_to_the_container_checks(tmp_path, smi_bin, two_h100):
    results = run_gpu_checks(_facts(tmp_path, _free_port(), serve_mode="container"), tmp_path, smi_bin, two_h100)
    assert _outcomes(results) == {
        PROCESS_CHECK: ("skipped", "serve_mode container: the replica containers' GPUs are checked by the "
                                   "container checks"),
        LIVE_CHECK: ("passed", "")}


# -- nvidia-smi on the host ---------------------------------------------------------------------

def test_fewer_live_gpus_than_planned_fails(tmp_path, smi_bin, replica_double):
    port = _free_port()
    replica_double(port, CUDA_VISIBLE_DEVICES="0,1", CUDA_DEVICE_ORDER="PCI_BUS_ID")
    results = run_gpu_checks(_facts(tmp_path, port), tmp_path, smi_bin, ONE_H100)
    outcome, reason = _outcomes(results)[LIVE_CHECK]
    assert outcome == "failed"
    assert reason.startswith("nvidia-smi shows 1 GPU(s) on gpu1 (0: NVIDIA H100 80GB HBM3), the plan was made for 2: ")
    assert "\n" not in reason


def test_a_planned_gpu_that_nvidia_smi_does_not_show_fails(tmp_path, smi_bin, two_h100):
    # Facts that contradict themselves (count 2, GPUs 1 and 2) to reach the second check.
    results = run_gpu_checks(_facts(tmp_path, _free_port(), gpus=(1, 2)), tmp_path, smi_bin, two_h100)
    assert _outcomes(results)[LIVE_CHECK] == (
        "failed", "replica 0 is planned on GPU(s) 2, which nvidia-smi does not show on gpu1 (it shows 0, 1)")


def test_a_failing_nvidia_smi_fails_with_its_message(tmp_path, smi_bin):
    no_driver = tmp_path / "no-driver"  # the double without query-gpu.csv: the driver is not loaded
    no_driver.mkdir()
    results = run_gpu_checks(_facts(tmp_path, _free_port()), tmp_path, smi_bin, no_driver)
    outcome, reason = _outcomes(results)[LIVE_CHECK]
    assert outcome == "failed"
    assert reason.startswith("nvidia-smi failed on gpu1 (exit 9): NVIDIA-SMI has failed because it couldn't "
                             "communicate with the NVIDIA driver.")


def test_both_checks_skip_on_a_cpu_plan(tmp_path, smi_bin):
    facts = _facts(tmp_path, _free_port(), gpu_count=0, gpus=(), accelerator="cpu")
    results = run_gpu_checks(facts, tmp_path, smi_bin, tmp_path)
    reason = "gpu1 has no NVIDIA GPU (planned for the CPU)"
    assert _outcomes(results) == {PROCESS_CHECK: ("skipped", reason), LIVE_CHECK: ("skipped", reason)}


# -- which process is the replica's (pure: command lines as /proc gives them) ----------------------

SERVER = "/opt/fm9g/envs/fm9g-cuda/bin/python -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --port 8100"
SUPERVISOR = ("/opt/fm9g/envs/fm9g-cuda/bin/python /opt/fm9g/bin/fm9g_replica_supervisor.py --port 8100 -- "
              + SERVER)


@pytest.mark.parametrize("command, port, runs", [
    (SERVER, 8100, True), (SERVER + " --model /m", None, True),
    (SERVER.replace("--port 8100", "--port=8100"), 8100, True), (SERVER, 8101, False), (SERVER.replace("python -m", "python -u -m"), 8100, True),
    (SUPERVISOR, 8100, False), ("VLLM::EngineCore", 8100, False), ("", None, False),
])
def test_runs_api_server(command, port, runs):
    assert runs_api_server(command, port) is runs


def test_main_process_is_the_server_not_its_forked_engine_nor_the_supervisor():
    table = {10: (1, SUPERVISOR), 11: (10, SERVER), 12: (11, SERVER), 13: (11, "VLLM::EngineCore")}
    # The API server and the engine it forked both hold the socket: the parent is the replica.
    assert main_process(table, {11, 13}) == 11
    assert main_process(table, {11, 12}) == 11
    # /proc's own scan finds the server and its fork (same command line), not the supervisor.
    servers = [pid for pid, (_, command) in table.items() if runs_api_server(command, 8100)]
    assert main_process(table, servers) == 11
    assert main_process({}, {40, 41}) == 40  # both gone meanwhile: the oldest
