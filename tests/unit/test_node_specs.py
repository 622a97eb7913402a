"""The specs of a replica over hosts (vLLM's own multi-node launcher): the head serves the API as node
rank 0, every other host runs a headless node that joins it, each bound to the hosts' network, and
each supervisor knows the others' status URLs."""

from __future__ import annotations

import pytest

from fm9g_deploy import layout
from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.gpu import HostGpuFacts
from fm9g_deploy.planner import plan_deployment
from fm9g_deploy.profiles import load_profile
from fm9g_deploy.replica_spec import build_node_specs, plan_specs, serve_settings

NETWORKS = {"host1": {"address": "172.30.0.11", "interface": "eth0"},
            "host2": {"address": "172.30.0.12", "interface": "eth0"}}


def cpu_plan(**serving):
    config = DeploymentConfig.model_validate({"model": {"name": "tiny-random"}, "profile": "cpu",
                                              "serving": {"hosts_per_replica": 2, **serving}})
    facts = {name: HostGpuFacts(problem="nvidia-smi not found") for name in ("host1", "host2", "host3")}
    return config, plan_deployment(config, facts)


def node_specs(**serving):
    config, plan = cpu_plan(**serving)
    settings = serve_settings(config, load_profile("cpu"))
    return build_node_specs(settings, plan.multi_host_replicas[0].to_dict(), NETWORKS,
                            rendezvous_port=config.serving.rendezvous_port, status_port=config.serving.node_status_port)


def after(argv, flag):
    return argv[argv.index(flag) + 1]


def test_the_head_serves_the_api_as_node_rank_0_on_the_hosts_network():
    head = node_specs()["host1"]
    vllm = head.vllm_argv()
    assert vllm[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and after(vllm, "--host") == "127.0.0.1"
    assert [after(vllm, flag) for flag in ("--tensor-parallel-size", "--pipeline-parallel-size", "--nnodes",
                                          "--node-rank", "--master-addr", "--master-port")] == [
        "2", "1", "2", "0", "172.30.0.11", "29500"]
    assert {key: head.environment[key] for key in ("VLLM_HOST_IP", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")} == {
        "VLLM_HOST_IP": "172.30.0.11", "GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
    supervisor = head.argv[:head.argv.index("--")]
    assert after(supervisor, "--port") == "8100" and after(supervisor, "--node-rank") == "0"
    assert after(supervisor, "--status-listen") == "172.30.0.11:29510"
    assert after(supervisor, "--peer") == "http://172.30.0.12:29510/status" and "--head" not in supervisor
    assert head.node == {"rank": 0, "hosts": ["host1", "host2"], "head": "host1", "address": "172.30.0.11",
                         "interface": "eth0", "master_addr": "172.30.0.11", "rendezvous_port": 29500,
                         "status_url": "http://172.30.0.11:29510/status",
                         "status_urls": ["http://172.30.0.11:29510/status", "http://172.30.0.12:29510/status"]}


def test_every_other_host_runs_a_headless_node_that_joins_the_head():
    node = node_specs()["host2"]
    vllm = node.vllm_argv()
    assert vllm[1] == layout.VLLM_WORKER and "--host" not in vllm and "--port" not in vllm
    assert [after(vllm, flag) for flag in ("--nnodes", "--node-rank", "--master-addr", "--master-port")] == [
        "2", "1", "172.30.0.11", "29500"]
    supervisor = node.argv[:node.argv.index("--")]
    assert "--port" not in supervisor and after(supervisor, "--head") == "http://172.30.0.11:29510/status"
    assert after(supervisor, "--status-listen") == "172.30.0.12:29510" and "--peer" not in supervisor
    assert node.environment["VLLM_HOST_IP"] == "172.30.0.12" and node.unit == "fm9g-replica@0.service"
    # the same engine on every node: the arguments after the launcher's own part are the head's
    head = node_specs()["host1"].vllm_argv()
    assert vllm[vllm.index("--model"):vllm.index("--node-rank")] == head[head.index("--model"):head.index("--node-rank")]


def test_ports_come_from_the_config():
    specs = node_specs(rendezvous_port=31000, node_status_port=31001)
    assert after(specs["host2"].vllm_argv(), "--master-port") == "31000"
    assert after(specs["host1"].argv, "--peer") == "http://172.30.0.12:31001/status"


def test_hosts_naming_their_interface_differently_are_refused():
    config, plan = cpu_plan()
    networks = {**NETWORKS, "host2": {"address": "172.30.0.12", "interface": "ib0"}}
    with pytest.raises(ValueError, match=r"name their network's interface differently: \['eth0', 'ib0'\]"):
        build_node_specs(serve_settings(config, load_profile("cpu")), plan.multi_host_replicas[0].to_dict(), networks,
                         rendezvous_port=29500, status_port=29510)


def test_a_one_host_replicas_spec_is_unchanged_by_nodes():
    config, plan = cpu_plan()
    [spec] = plan_specs(serve_settings(config, load_profile("cpu")), plan)["host3"]
    assert "node" not in spec.to_dict() and spec.environment["VLLM_HOST_IP"] == "127.0.0.1"
    assert "--node-rank" not in spec.argv and "--nnodes" not in spec.argv
