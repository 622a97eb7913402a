"""One replica over several hosts (issue 15, part 1): the planner's layout, its refusals, the
`plan --hosts N` CLI, and deploy refusing a plan it cannot serve yet."""

from __future__ import annotations

import json

import pytest

from fm9g_deploy.catalog import get_model
from fm9g_deploy.cli import main
from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.errors import UserError
from fm9g_deploy.facts import HostFacts
from fm9g_deploy.planner import GIB, RUNTIME_RESERVE_BYTES, hypothetical_host, plan_deployment, refuse_multi_host
from fm9g_deploy.profiles import load_profile

INTERCONNECT_WORDS = ("InfiniBand", "RoCE", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP")


def config(model: str = "fm9g-70b", profile: str = "cuda130", **serving) -> DeploymentConfig:
    return DeploymentConfig.model_validate({"model": {"name": model}, "profile": profile, "serving": serving})


def fleet(gpus: str, hosts: int) -> dict:
    return {f"host{i}": hypothetical_host(gpus) for i in range(1, hosts + 1)}


def plan_fleet(gpus: str, hosts: int, model: str = "fm9g-70b", profile: str = "cuda130", **serving):
    return plan_deployment(config(model, profile, **serving), fleet(gpus, hosts), check_driver=False)


@pytest.fixture
def pipelining_minicpm(monkeypatch):
    """An upstream vLLM whose MiniCPM could pipeline (hypothetical: vLLM 0.25 and 0.32 cannot), so the
    planner's pipeline layout is checked with the catalog's real model sizes."""
    monkeypatch.setattr("fm9g_deploy.architecture.NO_PIPELINE_PARALLEL", {})


# -- the profiles say how they span hosts ----------------------------------------------------------

def test_profiles_say_how_they_span_hosts():
    assert (load_profile("cuda130").multi_host, load_profile("cuda130").multi_host_launcher) == ("pipeline", "mp")
    assert (load_profile("cuda121").multi_host, load_profile("cuda121").multi_host_launcher) == ("tensor", "ray")
    assert (load_profile("cpu").multi_host, load_profile("cpu").multi_host_launcher) == ("tensor", "mp")


@pytest.mark.parametrize("change", [{"multi_host_launcher": None}, {"multi_host": None},
                                    {"multi_host_launcher": "slurm"}])
def test_a_profile_that_spans_hosts_names_its_launcher(change):
    data = load_profile("cuda130").model_dump()
    with pytest.raises(ValueError, match="multi_host"):
        type(load_profile("cuda130")).model_validate(data | change)


def test_multi_host_is_strict():
    data = load_profile("cuda130").model_dump()
    with pytest.raises(ValueError, match="multi_host"):
        type(load_profile("cuda130")).model_validate(data | {"multi_host": "expert"})


# -- 70B on two hosts of 2 x A100 80GB -------------------------------------------------------------

def test_70b_under_cuda130_is_tensor_parallel_across_hosts_as_minicpm_cannot_pipeline():
    replica = plan_fleet("2xA100-80GB", 2).multi_host_replicas[0]
    assert replica.parallelism == "tensor"
    assert (replica.tensor_parallel_size, replica.pipeline_parallel_size, replica.gpus_per_host) == (4, 1, 2)
    text = " ".join(replica.notes)
    assert ("tensor parallel across the hosts, not pipeline parallel: fm9g-70b is served as MiniCPMForCausalLM, and "
            "upstream vLLM's MiniCPM passes no residual between pipeline stages") in text
    assert "multi-node launcher" in text and "Ray" not in text


def test_70b_on_two_hosts_pipeline_under_cuda130(pipelining_minicpm):
    plan = plan_fleet("2xA100-80GB", 2)
    assert len(plan.multi_host_replicas) == 1
    replica = plan.multi_host_replicas[0]
    assert replica.hosts == ["host1", "host2"] and replica.parallelism == "pipeline"
    assert (replica.tensor_parallel_size, replica.pipeline_parallel_size, replica.gpus_per_host) == (2, 2, 2)
    assert replica.gpus == {"host1": [0, 1], "host2": [0, 1]}
    assert (replica.port, replica.max_model_len, replica.gpu_memory_utilization) == (8100, 32768, 0.9)
    # The heaviest stage, recomputed from the catalog: 40 of the 80 layers at TP 2, plus one
    # vocab x hidden matrix at TP 2, plus the norms; its KV cache covers its 40 layers only.
    spec = get_model("fm9g-70b")
    layer = (2 * 8192 * 64 * 128) * 2 + 3 * 8192 * 29568
    weights = ((40 * layer + 73448 * 8192) // 2 + (2 * 40 + 1) * 8192) * 2
    kv = 2 * 40 * 32 * 128 * 2 * 32768
    memory = replica.memory_per_gpu
    assert memory.weights == weights and memory.kv_cache_one_sequence == kv
    assert weights + kv + RUNTIME_RESERVE_BYTES <= 0.9 * 80 * GIB  # fits the budget
    assert memory.headroom >= 0 and memory.full_length_sequences >= 1
    # a quarter of the model per GPU, and a little more (the embedding of the first stage)
    whole = spec.parameter_count * 2
    assert whole / 4 < memory.weights < whole / 4 + GIB
    text = " ".join(replica.notes)
    assert all(word in text for word in INTERCONNECT_WORDS)
    assert "pipeline parallel across the hosts (PP 2" in text and "embedding" in text and "lm_head" in text
    assert "deploy does not" not in text  # vLLM's own multi-node launcher: deploy serves it
    # The spanned hosts have no replica of their own and say what their GPUs do.
    for name, stage in (("host1", 1), ("host2", 2)):
        host = plan.hosts[name]
        assert host.replicas == [] and host.tensor_parallel_size == 2 and host.memory_per_gpu == memory
        assert any(f"pipeline stage {stage} of 2" in note for note in host.notes)
    assert any("the head: the API on port 8100" in note for note in plan.hosts["host1"].notes)


def test_70b_on_two_hosts_tensor_under_cuda121():
    plan = plan_fleet("2xA100-80GB", 2, profile="cuda121")
    replica = plan.multi_host_replicas[0]
    assert replica.hosts == ["host1", "host2"] and replica.parallelism == "tensor"
    assert (replica.tensor_parallel_size, replica.pipeline_parallel_size, replica.gpus_per_host) == (4, 1, 2)
    # TP 4 over two hosts is the same per-GPU arithmetic as TP 4 on one host of four GPUs
    one_host = plan_deployment(config(profile="cuda121"), {"h": hypothetical_host("4xA100-80GB")}, check_driver=False)
    assert replica.memory_per_gpu == one_host.hosts["h"].memory_per_gpu
    text = " ".join(replica.notes)
    assert all(word in text for word in INTERCONNECT_WORDS) and "far more demanding" in text
    assert any("worker, node rank 1" in note for note in plan.hosts["host2"].notes)
    assert "on a Ray cluster of the hosts" in text


def test_the_json_of_a_plan_over_hosts(pipelining_minicpm):
    data = json.loads(json.dumps(plan_fleet("2xA100-80GB", 2).to_dict()))
    assert [host["replicas"] for host in data["hosts"].values()] == [[], []]
    replica = data["multi_host_replicas"][0]
    assert {key: replica[key] for key in ("hosts", "head", "tensor_parallel_size", "pipeline_parallel_size",
                                          "gpus_per_host", "port", "max_model_len")} == {
        "hosts": ["host1", "host2"], "head": "host1", "tensor_parallel_size": 2, "pipeline_parallel_size": 2,
        "gpus_per_host": 2, "port": 8100, "max_model_len": 32768}
    assert replica["memory_per_gpu"]["headroom_gib"] > 0


def test_hosts_are_taken_in_inventory_order():
    facts = {name: hypothetical_host("2xA100-80GB") for name in ("zeta", "alpha")}
    plan = plan_deployment(config(), facts, check_driver=False)
    assert plan.multi_host_replicas[0].hosts == ["zeta", "alpha"]
    assert list(plan.hosts) == ["alpha", "zeta"]  # the plan still lists hosts by name


def test_the_fewest_hosts_are_spanned_and_the_rest_are_noted():
    plan = plan_fleet("2xA100-80GB", 3)
    assert plan.multi_host_replicas[0].hosts == ["host1", "host2"]
    assert plan.hosts["host3"].replicas == [] and plan.hosts["host3"].memory_per_gpu is None
    assert any("no replica" in note and "needs only 2 such hosts" in note for note in plan.hosts["host3"].notes)
    assert any("host host3 left without a replica" in note for note in plan.multi_host_replicas[0].notes)


def test_hosts_with_other_gpus_are_left_as_they_are():
    facts = {"a": hypothetical_host("2xA100-80GB"), "odd": hypothetical_host("1xA100-80GB"),
             "b": hypothetical_host("2xA100-80GB")}
    plan = plan_deployment(config(), facts, check_driver=False)
    assert plan.multi_host_replicas[0].hosts == ["a", "b"]
    assert plan.hosts["odd"].replicas == []
    assert any("differ from the replica's hosts'" in note for note in plan.hosts["odd"].notes)


def test_more_hosts_of_one_gpu_each(pipelining_minicpm):
    replica = plan_fleet("1xA100-40GB", 8).multi_host_replicas[0]
    assert (replica.tensor_parallel_size, replica.pipeline_parallel_size, replica.max_model_len) == (1, 8, 32768)
    tensor = plan_fleet("1xA100-40GB", 8, profile="cuda121").multi_host_replicas[0]
    assert (tensor.tensor_parallel_size, tensor.pipeline_parallel_size) == (8, 1)


def test_too_few_hosts_for_the_full_context_shorten_it(pipelining_minicpm):
    replica = plan_fleet("1xA100-40GB", 5).multi_host_replicas[0]
    assert replica.pipeline_parallel_size == 5 and replica.max_model_len == 4096
    assert any("reduced from 32768 to 4096" in note and "8 such hosts would hold it" in note for note in replica.notes)


def test_tensor_parallel_size_override_applies_within_a_host(pipelining_minicpm):
    replica = plan_fleet("2xA100-80GB", 4, tensor_parallel_size=1).multi_host_replicas[0]
    assert (replica.tensor_parallel_size, replica.pipeline_parallel_size, replica.gpus_per_host) == (1, 4, 1)
    assert replica.gpus == {f"host{i}": [0] for i in range(1, 5)}
    assert any("1 GPU(s) of each host unused" in note for note in replica.notes)


def test_tensor_mode_keeps_tp_valid():
    # 3 GPUs a host: TP 6 cannot divide 64 heads, so two of each host's GPUs make TP 4.
    replica = plan_fleet("3x80GiB", 2, profile="cuda121").multi_host_replicas[0]
    assert (replica.tensor_parallel_size, replica.gpus_per_host) == (4, 2)


# -- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["cuda130", "cuda121"])
def test_a_fleet_too_small_is_one_line_naming_the_need(profile):
    with pytest.raises(UserError) as refused:
        plan_fleet("1xA100-40GB", 2, profile=profile)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 400
    assert message.startswith("fm9g-70b does not fit even with one replica over all 2 hosts of 1 x 40 GiB A100-40GB")
    assert "75.3 GiB weights + 40.0 GiB KV cache + 3.0 GiB reserve but may use 36.0 GiB" in message
    assert "8 such hosts would hold it" in message
    plan_fleet("1xA100-40GB", 8, profile=profile)  # and they would
    with pytest.raises(UserError, match="8 such hosts"):
        plan_fleet("1xA100-40GB", 7, profile=profile, max_model_len=32768)


def test_one_host_too_small_keeps_its_message_and_says_what_spanning_takes():
    with pytest.raises(UserError) as refused:
        plan_fleet("2xA100-80GB", 1, profile="cuda121")
    message = str(refused.value)
    assert message.startswith("fm9g-70b needs 4 GPUs of 80 GiB for 32768-token sequences")
    assert message.endswith("with profile cuda121 one replica can span hosts (tensor parallel): 2 such hosts would hold it")


def test_no_multi_host_profile_keeps_the_refusal_and_adds_the_hint(monkeypatch):
    """The shipped profile without multi_host is cpu, whose hosts have no GPU to run short of; a
    GPU profile without it shows the refusal every profile without multi_host gives."""
    single = load_profile("cuda130").model_copy(update={"name": "single", "multi_host": None})
    monkeypatch.setattr("fm9g_deploy.planner.load_profile", lambda name: single if name == "cuda130" else load_profile(name))
    with pytest.raises(UserError) as refused:
        plan_fleet("2xA100-80GB", 2)
    assert str(refused.value) == (
        "fm9g-70b needs 4 GPUs of 80 GiB for 32768-token sequences (gpu_memory_utilization 0.9) but host host1 "
        "(2 x 80 GiB A100-80GB) has 2; add GPUs or use larger ones; profile single cannot span hosts "
        "(profile cuda121 can run one replica over several hosts)")  # cuda130 reads as `single` here


def test_the_cpu_profile_is_unchanged():
    no_gpu = __import__("fm9g_deploy.gpu", fromlist=["HostGpuFacts"]).HostGpuFacts(problem="nvidia-smi not found")
    plan = plan_deployment(config("fm9g-4b", "cpu"), {"a": no_gpu, "b": no_gpu})
    assert plan.multi_host_replicas == [] and [len(h.replicas) for h in plan.hosts.values()] == [1, 1]
    with pytest.raises(UserError, match=r"cpu_kvcache_space_gib is 1; raise cpu_kvcache_space_gib or lower max_model_len$"):
        plan_deployment(config("fm9g-4b", "cpu", max_model_len=32768), {"a": no_gpu})
    with pytest.raises(UserError, match=r"profile is cpu; set `profile: cuda121 or cuda130` in the config to serve on them$"):
        plan_deployment(config("fm9g-70b", "cpu"), fleet("2xA100-80GB", 2))


def test_a_host_that_holds_the_model_alone_means_no_spanning():
    facts = {"big": hypothetical_host("4xA100-80GB"), "small": hypothetical_host("2xA100-80GB")}
    with pytest.raises(UserError, match=r"^fm9g-70b needs 4 GPUs of 80 GiB .* host small .*; one replica spans hosts "
                                        r"only where no host holds fm9g-70b alone \(host big does\)"):
        plan_deployment(config(), facts, check_driver=False)


def test_replicas_per_host_cannot_split_a_spanning_replica():
    with pytest.raises(UserError, match="serving.replicas_per_host 2: fm9g-70b needs more GPUs than any host has"):
        plan_fleet("2xA100-80GB", 2, replicas_per_host=2)
    assert plan_fleet("2xA100-80GB", 2, replicas_per_host=1).multi_host_replicas[0].hosts == ["host1", "host2"]


def test_settings_that_fail_on_one_host_are_still_refused_there():
    # TP 1 is a valid size the host could hold more of: the override is the mistake, not the host.
    with pytest.raises(UserError, match="tensor_parallel_size 2 is too small"):
        plan_deployment(config(profile="cuda121", tensor_parallel_size=2), fleet("4xA100-80GB", 2), check_driver=False)


# -- a model that fits one host is planned as before -------------------------------------------------

def test_a_model_that_fits_one_host_is_planned_as_before():
    plan = plan_deployment(config("fm9g-4b", "cuda121"), {"h": hypothetical_host("1xA100-40GB")}, check_driver=False)
    assert plan.multi_host_replicas == []
    refuse_multi_host(plan, "deploy")  # nothing to refuse
    assert plan.to_dict() == {
        "model": "fm9g-4b", "profile": "cuda121",
        "hosts": {"h": {
            "host": "h", "accelerator": "cuda", "gpu_count": 1, "gpu_name": "A100-40GB",
            "gpu_models": [{"name": "A100-40GB", "gpus": [0], "memory_mib": 40960}], "gpu_memory_mib": 40960,
            "cuda_driver_version": None, "tensor_parallel_size": 1,
            "replicas": [{"index": 0, "port": 8100, "tensor_parallel_size": 1, "gpus": [0],
                          "gpu_memory_utilization": 0.9, "max_model_len": 32768}],
            "memory_per_gpu": {"total_gib": 40.0, "budget_gib": 36.0, "weights_gib": 7.69,
                               "kv_cache_one_sequence_gib": 1.94, "reserve_gib": 3.0, "headroom_gib": 23.37,
                               "full_length_sequences": 13},
            "notes": []}},
        "multi_host_replicas": [],
    }


def test_stage_sizes_at_pp_1_are_the_single_host_sizes():
    spec = get_model("fm9g-70b")
    for tp in (1, 2, 4, 8):
        assert spec.stage_weight_bytes_per_gpu(tp, 1) == spec.weight_bytes_per_gpu(tp)
        assert spec.stage_kv_cache_bytes_per_token_per_gpu(tp, 1) == spec.kv_cache_bytes_per_token_per_gpu(tp)
    assert spec.stage_layers(3) == 27 and spec.stage_layers(80) == 1


# -- the CLI ---------------------------------------------------------------------------------------

def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_plans_a_fleet_of_hypothetical_hosts(capsys):
    code, out, _ = run(capsys, "--model", "fm9g-70b", "--gpus", "2xA100-80GB", "--hosts", "2", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["profile"] == "cuda121"  # a --gpus plan without a config uses the default profile
    assert list(plan["hosts"]) == ["host1", "host2"]
    assert [host["replicas"] for host in plan["hosts"].values()] == [[], []]
    [replica] = plan["multi_host_replicas"]
    assert (replica["hosts"], replica["tensor_parallel_size"], replica["pipeline_parallel_size"]) == (
        ["host1", "host2"], 4, 1)


def test_cli_pipeline_layout_with_a_cuda130_config(tmp_path, capsys, pipelining_minicpm):
    (tmp_path / "fm9g.yml").write_text("profile: cuda130\n")
    code, out, _ = run(capsys, "--config", str(tmp_path / "fm9g.yml"), "--model", "fm9g-70b",
                       "--gpus", "2xA100-80GB", "--hosts", "2", "--json")
    assert code == 0
    [replica] = json.loads(out)["multi_host_replicas"]
    assert (replica["tensor_parallel_size"], replica["pipeline_parallel_size"]) == (2, 2)


def test_cli_table_shows_the_spanning_replica_and_its_notes(capsys):
    code, out, _ = run(capsys, "--model", "fm9g-70b", "--gpus", "2xA100-80GB", "--hosts", "2")
    assert code == 0
    assert ("replica over host1, host2: head host1, port 8100, tensor parallel: tensor_parallel_size 4, "
            "pipeline_parallel_size 1, 2 GPU(s) per host, gpu_memory_utilization 0.9, max_model_len 32768") in out
    assert "replica over host1, host2: interconnect:" in out and "NCCL_SOCKET_IFNAME" in out
    assert "host2: GPU(s) 0, 1 serve the replica over host1, host2 (worker, node rank 1)" in out


def test_cli_one_host_keeps_its_name(capsys):
    code, out, _ = run(capsys, "--model", "fm9g-4b", "--gpus", "1xH100", "--hosts", "1", "--json")
    assert code == 0 and list(json.loads(out)["hosts"]) == ["1xH100"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus", "2xA100-80GB", "--hosts", "0"], "--hosts 0: the number of hosts must be 1 to 64"),
    (["--gpus", "2xA100-80GB", "--hosts", "65"], "--hosts 65: the number of hosts must be 1 to 64"),
    (["--gpus", "2xA100-80GB", "--hosts", "two"], "argument --hosts: invalid int value: 'two'"),
    (["-i", "hosts.yml", "--hosts", "2"], "--hosts plans hypothetical hosts: use it with --gpus"),
    (["--model", "fm9g-70b", "--gpus", "1xA100-40GB", "--hosts", "2"], "8 such hosts would hold it"),
])
def test_cli_bad_hosts_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("fm9g-deploy: error: ")


# -- deploy and verify refuse what they cannot serve ---------------------------------------------------

def test_refuse_multi_host_names_the_hosts_on_ray_only():
    plan = plan_fleet("2xA100-80GB", 2, profile="cuda121")
    assert "deploy does not run a Ray cluster yet: on profile cuda121 this layout is a plan only" in (
        plan.multi_host_replicas[0].notes)
    with pytest.raises(UserError) as refused:
        refuse_multi_host(plan, "deploy")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("deploy: the plan spans hosts: one fm9g-70b replica over host1, host2 (TP 4 x PP 1) "
                              "on a Ray cluster, which profile cuda121 needs and fm9g-deploy does not run yet")
    refuse_multi_host(plan_fleet("2xA100-80GB", 2), "deploy")  # cuda130: vLLM's own launcher, served


def test_deploy_refuses_a_plan_over_hosts_before_running_anything(tmp_path, monkeypatch, capsys):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    (tmp_path / "fm9g.yml").write_text("model: {name: fm9g-70b}\nprofile: cuda121\n")

    def never(*args, **kwargs):
        raise AssertionError("deploy went past the plan")

    monkeypatch.setattr("fm9g_deploy.ansible.serving_hosts", lambda inventory, limit=None: None)
    monkeypatch.setattr("fm9g_deploy.hostvars.load_stack", lambda config, *args: object())
    facts = fleet("2xA100-80GB", 2)
    for host in facts.values():
        host.cuda_driver_version = "13.0"  # deploy checks the driver
    monkeypatch.setattr("fm9g_deploy.facts.read_hosts", lambda inventory, limit=None, serve_mode="systemd":
                        HostFacts(gpus=facts))
    monkeypatch.setattr("fm9g_deploy.apikey.resolve_api_key", never)
    monkeypatch.setattr("fm9g_deploy.ansible.run_playbook", never)
    code = main(["deploy", "-i", str(inventory)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "deploy: the plan spans hosts: one fm9g-70b replica over host1, host2" in err and "Ray" in err


def test_serve_specs_of_a_plan_over_hosts_do_not_crash():
    from fm9g_deploy.replica_spec import plan_specs, serve_settings

    plan = plan_fleet("2xA100-80GB", 2)
    specs = plan_specs(serve_settings(config(), load_profile("cuda130")), plan)
    assert specs == {"host1": [], "host2": []}


NETWORKS = {"host1": {"address": "10.0.0.1", "interface": "ib0", "problem": None},
            "host2": {"address": "10.0.0.2", "interface": "ib0", "problem": None}}


def test_deploy_runs_a_replica_over_hosts_as_a_head_and_headless_nodes():
    """What deploy hands serve.yml for 70B over two 2 x A100 hosts (cuda130): host1's head serves the API,
    host2 runs a headless node; the fleet has one replica clients reach."""
    from fm9g_deploy.hostvars import Stack, serve_vars

    stack = Stack(config(), load_profile("cuda130"), None, "s", None, "http://mirror")
    plan = plan_fleet("2xA100-80GB", 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Stack, "revision", lambda self: "r")
        patch.setattr(Stack, "image_tag", lambda self: "i")
        values = serve_vars(stack, plan, "key", networks=NETWORKS)
    head, node = values["fm9g_plan"]["host1"], values["fm9g_plan"]["host2"]
    assert [spec["node"]["rank"] for spec in head + node] == [0, 1]
    assert head[0]["gpus"] == node[0]["gpus"] == [0, 1]
    assert head[0]["environment"]["VLLM_HOST_IP"] == "10.0.0.1" and node[0]["environment"]["NCCL_SOCKET_IFNAME"] == "ib0"
    assert values["fm9g_headless_nodes"] == {"host2": [0]}
    assert values["fm9g_rollout_fleet_replicas"] == 1


@pytest.mark.parametrize(("networks", "message"), [
    ({"host1": NETWORKS["host1"]}, "host host2: no address on the hosts' network for its node of the replica over "
                                   "host1, host2 (its facts were not read); set fm9g_interconnect_address"),
    ({**NETWORKS, "host2": {"address": None, "interface": None, "problem": "interface ib0 has no IPv4 address"}},
     "host host2: no address on the hosts' network for its node of the replica over host1, host2 (interface ib0 "
     "has no IPv4 address)"),
    ({**NETWORKS, "host2": {"address": "10.0.0.2", "interface": "ib1"}},
     "the hosts of the replica over host1, host2 reach each other on interfaces of different names (ib0, ib1)"),
])
def test_nodes_without_an_address_on_the_hosts_network_are_refused(networks, message):
    from fm9g_deploy.replica_spec import deployment_specs

    with pytest.raises(UserError) as refused:
        deployment_specs(config(), load_profile("cuda130"), plan_fleet("2xA100-80GB", 2), networks)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_replica_over_hosts_in_containers_is_refused():
    from fm9g_deploy.replica_spec import deployment_specs

    with pytest.raises(UserError, match="serves as systemd units only so far; set serving.serve_mode: systemd$"):
        deployment_specs(config(serve_mode="container"), load_profile("cuda130"),
                         plan_fleet("2xA100-80GB", 2, serve_mode="container"), NETWORKS)


def test_hosts_that_all_differ_cannot_span():
    facts = {"a": hypothetical_host("2xA100-80GB"), "b": hypothetical_host("1xA100-80GB")}
    with pytest.raises(UserError, match=r"^fm9g-70b does not fit on any one host, and no two hosts have identical GPUs "
                                        r"to span with profile cuda130 \(a: 2 x 80 GiB A100-80GB, b: 1 x 80 GiB "
                                        r"A100-80GB\); of a's kind 2 such hosts would hold it$"):
        plan_deployment(config(), facts, check_driver=False)


# -- serving.hosts_per_replica: the CPU profile's rehearsal of a replica over hosts ---------------------

def cpu_fleet(count: int) -> dict:
    from fm9g_deploy.gpu import HostGpuFacts

    return {f"host{i}": HostGpuFacts(problem="nvidia-smi not found") for i in range(1, count + 1)}


def test_cpu_hosts_per_replica_spans_the_first_hosts_tensor_parallel():
    facts = cpu_fleet(3)
    plan = plan_deployment(config("tiny-random", "cpu", hosts_per_replica=2), facts)
    [replica] = plan.multi_host_replicas
    assert (replica.hosts, replica.parallelism, replica.tensor_parallel_size, replica.pipeline_parallel_size) == (
        ["host1", "host2"], "tensor", 2, 1)
    assert (replica.gpus, replica.gpus_per_host, replica.memory_per_gpu, replica.port) == (
        {"host1": [], "host2": []}, 0, None, 8100)
    single = plan_deployment(config("tiny-random", "cpu"), {"h": facts["host1"]})
    assert replica.max_model_len == single.hosts["h"].replicas[0].max_model_len
    assert [plan.hosts[h].replicas for h in ("host1", "host2")] == [[], []]
    assert len(plan.hosts["host3"].replicas) == 1  # the host left out keeps its own replica
    assert any("the head: the API on port 8100" in note for note in plan.hosts["host1"].notes)
    assert any("worker, node rank 1" in note for note in plan.hosts["host2"].notes)
    text = " ".join(replica.notes)
    assert "GLOO_SOCKET_IFNAME" in text and "VLLM_HOST_IP" in text and "multi-node launcher" in text
    assert json.loads(json.dumps(plan.to_dict()))["multi_host_replicas"][0]["memory_per_gpu"] is None


def test_cpu_hosts_per_replica_keeps_inventory_order():
    from fm9g_deploy.gpu import HostGpuFacts

    facts = {name: HostGpuFacts(problem="nvidia-smi not found") for name in ("zeta", "alpha")}
    plan = plan_deployment(config("tiny-random", "cpu", hosts_per_replica=2), facts)
    assert plan.multi_host_replicas[0].hosts == ["zeta", "alpha"]


@pytest.mark.parametrize(("serving", "facts", "message"), [
    ({"hosts_per_replica": 3}, 2, r"^serving.hosts_per_replica 3: the plan has only 2 serving host\(s\) \(host1, host2\); "
                                  r"add hosts, lower hosts_per_replica, or drop --limit$"),
    ({"hosts_per_replica": 2, "replicas_per_host": 2}, 2,
     r"^serving.hosts_per_replica 2 with replicas_per_host 2: a host in a replica over hosts runs one rank"),
    ({"hosts_per_replica": 3}, 3, r"^serving.hosts_per_replica 3: tensor parallel 3 cannot shard tiny-random \(2 "
                                  r"attention heads, 1 KV heads\)"),
])
def test_cpu_hosts_per_replica_refusals_are_one_line(serving, facts, message):
    with pytest.raises(UserError, match=message) as refused:
        plan_deployment(config("tiny-random", "cpu", **serving), cpu_fleet(facts))
    assert "\n" not in str(refused.value)


def test_hosts_per_replica_is_the_cpu_rehearsal_only():
    with pytest.raises(UserError, match=r"^serving.hosts_per_replica 2: on GPU hosts a replica spans hosts only where "
                                        r"no host holds fm9g-4b alone, as the planner decides; remove"):
        plan_deployment(config("fm9g-4b", "cuda130", hosts_per_replica=2), fleet("1xA100-80GB", 2), check_driver=False)


@pytest.mark.parametrize("value", [1, 0, 65])
def test_hosts_per_replica_is_checked_by_the_config(value):
    with pytest.raises(ValueError, match="hosts_per_replica"):
        config("tiny-random", "cpu", hosts_per_replica=value)


def test_cli_table_of_a_cpu_replica_over_hosts(tmp_path, capsys, monkeypatch):
    facts = cpu_fleet(2)  # as two hosts without nvidia-smi answer
    monkeypatch.setattr("fm9g_deploy.commands.plan._gather_facts", lambda args, serve_mode: (facts, {}))
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    serving:\n      hosts: {host1: {}, host2: {}}\n")
    (tmp_path / "fm9g.yml").write_text("model: {name: tiny-random}\nprofile: cpu\nserving: {hosts_per_replica: 2}\n")
    code, out, err = run(capsys, "-i", str(tmp_path / "hosts.yml"))
    assert code == 0, err
    assert ("replica over host1, host2: head host1, port 8100, tensor parallel: tensor_parallel_size 2, "
            "pipeline_parallel_size 1, CPU, max_model_len") in out
    assert "host2: serves the replica over host1, host2 (worker, node rank 1); no replica of its own" in out
