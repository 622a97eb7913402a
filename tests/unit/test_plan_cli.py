"""`fm9g-deploy plan`, run in-process through fm9g_deploy.cli.main.

The `plan -i` tests run the real playbooks/gpu_facts.yml with Ansible against local-connection
hosts; the "GPU" host's nvidia-smi is the labelled test double
tests/fixtures/nvidia-smi/nvidia-smi-double.sh replaying real H100 output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from fm9g_deploy.cli import main

SMI_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hypothetical_70b_json(capsys):
    code, out, _ = run(capsys, "--model", "fm9g-70b", "--gpus", "4xA100-80GB", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["model"] == "fm9g-70b"
    host = plan["hosts"]["4xA100-80GB"]
    assert host["replicas"] == [{"index": 0, "port": 8100, "tensor_parallel_size": 4, "gpus": [0, 1, 2, 3],
                                 "gpu_memory_utilization": 0.9, "max_model_len": 32768}]


def test_hypothetical_table(capsys):
    code, out, _ = run(capsys, "--model", "fm9g-4b", "--gpus", "8xA100-80GB")
    assert code == 0
    assert "fm9g-4b on profile cuda121" in out and "8100-8107" in out
    assert "replica 7: port 8107, GPUs 7, gpu_memory_utilization 0.9, max_model_len 32768" in out


def test_config_overrides_apply_to_hypothetical_hosts(tmp_path, capsys):
    config = tmp_path / "fm9g.yml"
    config.write_text("model:\n  name: fm9g-7b\nserving:\n  tensor_parallel_size: 2\n  replica_base_port: 9000\n")
    code, out, _ = run(capsys, "--config", str(config), "--gpus", "4x40GiB", "--json")
    assert code == 0
    replicas = json.loads(out)["hosts"]["4x40GiB"]["replicas"]
    assert [(r["port"], r["gpus"]) for r in replicas] == [(9000, [0, 1]), (9001, [2, 3])]


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus", "4xB100"], "unknown GPU 'B100'"),
    (["--gpus", "lots"], "is not COUNTxGPU"),
    (["--model", "fm9g-9000", "--gpus", "1xH100"], "unknown model 'fm9g-9000'; choose one of fm9g-4b"),
    (["--model", "fm9g-70b", "--gpus", "1xA100-80GB"], "fm9g-70b needs 4 GPUs of 80 GiB"),
    (["--gpus", "1xH100", "--config", "/nonexistent/fm9g.yml"], "config file /nonexistent/fm9g.yml not found"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("fm9g-deploy: error: ")


def test_impossible_override_in_config(tmp_path, capsys):
    config = tmp_path / "fm9g.yml"
    config.write_text("serving:\n  tensor_parallel_size: 3\n")
    code, _, err = run(capsys, "--config", str(config), "--gpus", "4xH100")
    assert code == 2 and "cannot shard fm9g-4b" in err


@pytest.mark.parametrize("argv", [[], ["-i", "hosts.yml", "--gpus", "1xH100"]])
def test_exactly_one_of_inventory_or_gpus(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "-i/--inventory" in err and "see `fm9g-deploy plan --help`" in err


# -- plan -i: the real gpu_facts playbook ---------------------------------------------------------------

@pytest.fixture
def local_inventory(tmp_path, monkeypatch):
    """Two local-connection serving hosts: `gpu` runs the nvidia-smi test double, `cpu` has none."""
    double = tmp_path / "nvidia-smi"
    double.write_text(f'#!/bin/sh\nexec sh "{SMI_FIXTURES / "nvidia-smi-double.sh"}" "$@"\n')
    double.chmod(0o755)
    monkeypatch.setenv("FM9G_NVIDIA_SMI_DOUBLE_DIR", str(SMI_FIXTURES / "h100-80gb"))
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {"all": {"children": {
        "serving": {"hosts": {
            "gpu": {**local, "fm9g_nvidia_smi": str(double)},
            "cpu": {**local, "fm9g_nvidia_smi": str(tmp_path / "absent" / "nvidia-smi")},
        }},
        "gateway": {"hosts": {"edge": {**local, "fm9g_nvidia_smi": str(double)}}},
    }}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    (tmp_path / "fm9g.yml").write_text("model:\n  name: fm9g-4b\nprofile: cuda121\n")
    return path


def test_plan_from_inventory(local_inventory, capsys):
    code, out, _ = run(capsys, "-i", str(local_inventory), "--limit", "gpu", "--json")
    assert code == 0
    plan = json.loads(out)
    assert list(plan["hosts"]) == ["gpu"]
    host = plan["hosts"]["gpu"]
    assert (host["gpu_count"], host["gpu_memory_mib"], host["cuda_driver_version"]) == (1, 81559, "13.0")
    assert host["replicas"] == [{"index": 0, "port": 8100, "tensor_parallel_size": 1, "gpus": [0],
                                 "gpu_memory_utilization": 0.9, "max_model_len": 32768}]


def test_inventory_host_without_gpu_and_gpu_profile(local_inventory, capsys):
    # Only the serving group is planned (not the gateway); the GPU-less host stops the plan.
    code, out, err = run(capsys, "-i", str(local_inventory), "--json")
    assert code == 2 and out == ""
    assert "host cpu has no usable NVIDIA GPU (nvidia-smi not found) but profile cuda121 needs one" in err
