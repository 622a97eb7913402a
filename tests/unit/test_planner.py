"""The capacity planner: catalog sizes, TP/replica choice, overrides, CPU hosts, driver checks."""

from __future__ import annotations

import json
import re

import pytest

from fm9g_deploy.catalog import get_model, load_catalog
from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.errors import UserError
from fm9g_deploy.gpu import GpuInfo, HostGpuFacts, parse_cuda_version
from fm9g_deploy.planner import (
    GIB,
    MIN_REDUCED_MAX_MODEL_LEN,
    RUNTIME_RESERVE_BYTES,
    hypothetical_host,
    plan_deployment,
)
from tests.unit.nvidia_smi_fixtures import SMI_FIXTURES, facts_from_double, recorded_gpus

FM9G_MODELS = [name for name, spec in load_catalog().items() if spec.architecture == "FM9GForCausalLM" and not spec.generated]


def config(model: str = "fm9g-4b", profile: str = "cuda121", **serving) -> DeploymentConfig:
    return DeploymentConfig.model_validate({"model": {"name": model}, "profile": profile, "serving": serving})


def plan_one(model: str, gpus: str, **serving):
    """Plan one hypothetical host (`4xA100-80GB`) and return its HostPlan."""
    plan = plan_deployment(config(model, **serving), {"host": hypothetical_host(gpus)}, check_driver=False)
    return plan.hosts["host"]


def gpu_host(*memories_mib: int, used_mib: int = 0, cuda: str = "13.0") -> HostGpuFacts:
    gpus = [GpuInfo(index=i, uuid=f"GPU-{i}", name="NVIDIA Test GPU", memory_total_mib=mib, memory_used_mib=used_mib,
                    memory_free_mib=mib - used_mib, driver_version="580.159.04", pci_bus_id=None,
                    compute_capability="9.0")
            for i, mib in enumerate(memories_mib)]
    return HostGpuFacts(gpus=gpus, driver_version="580.159.04", cuda_driver_version=cuda, nvidia_smi="/usr/bin/nvidia-smi")


NO_GPU = HostGpuFacts(problem="nvidia-smi not found")


# -- catalog sizes --------------------------------------------------------------------------------

def test_parameter_counts_follow_the_architecture():
    billions = {name: get_model(name).parameter_count / 1e9 for name in FM9G_MODELS}
    assert 4.0 < billions["fm9g-4b"] < 4.3
    assert 7.5 < billions["fm9g-7b"] < 7.8
    assert 80 < billions["fm9g-70b"] < 82  # the MHA release: 64 KV heads add ~9e9 over a GQA 70B
    assert 8.5 < billions["fm9g-8b"] < 9.0


def test_kv_bytes():
    four_b = get_model("fm9g-4b")
    assert four_b.kv_cache_bytes_per_token() == 2 * 62 * 4 * 64 * 2
    assert get_model("fm9g-70b").kv_cache_bytes_per_token() == 2 * 80 * 64 * 128 * 2


def test_per_gpu_shares_under_tensor_parallelism():
    seventy = get_model("fm9g-70b")
    whole = seventy.parameter_count * seventy.dtype_bytes()  # all weights, in the model's bf16
    assert whole / 4 <= seventy.weight_bytes_per_gpu(4) < whole / 4 + 10 * 2**20  # plus replicated norms
    assert seventy.kv_cache_bytes_per_token_per_gpu(4) * 4 == seventy.kv_cache_bytes_per_token()
    four_b = get_model("fm9g-4b")  # 4 KV heads: at TP 8 each GPU keeps a whole KV head
    assert four_b.kv_heads_per_gpu(8) == 1
    assert four_b.kv_cache_bytes_per_token_per_gpu(8) == four_b.kv_cache_bytes_per_token() // 4


def test_tensor_parallel_sizes_follow_vllms_rules():
    assert get_model("fm9g-4b").tensor_parallel_sizes(8) == [1, 2, 4, 8]  # 40 heads, 4 KV heads
    assert get_model("fm9g-7b").tensor_parallel_sizes() == [1, 2, 4]  # 7 divides the heads, not the MLP width
    assert get_model("fm9g-70b").tensor_parallel_sizes(8) == [1, 2, 4, 8]


# -- every model on every common host: a valid plan or a clear "needs N GPUs" -----------------------

@pytest.mark.parametrize("model", FM9G_MODELS)
@pytest.mark.parametrize("count", [1, 2, 4, 8])
@pytest.mark.parametrize("size_gib", [16, 24, 40, 80])
def test_plan_is_valid_or_says_what_it_needs(model, count, size_gib):
    spec = get_model(model)
    try:
        host = plan_one(model, f"{count}x{size_gib}GiB")
    except UserError as exc:
        match = re.search(r"needs (\d+) GPUs of (\d+) GiB", str(exc))
        assert match, str(exc)
        needed, size = int(match.group(1)), int(match.group(2))
        assert size == size_gib and needed > count
        assert plan_one(model, f"{needed}x{size_gib}GiB").tensor_parallel_size == needed  # and it is enough
        return
    tp = host.tensor_parallel_size
    assert spec.num_attention_heads % tp == 0
    assert spec.num_kv_heads % tp == 0 or tp % spec.num_kv_heads == 0
    used = [gpu for replica in host.replicas for gpu in replica.gpus]
    assert len(used) == len(set(used)) and set(used) <= set(range(count))
    assert [replica.port for replica in host.replicas] == [8100 + i for i in range(len(host.replicas))]
    for replica in host.replicas:
        assert replica.tensor_parallel_size == tp and len(replica.gpus) == tp
        assert MIN_REDUCED_MAX_MODEL_LEN <= replica.max_model_len <= spec.max_model_len
        # weights + one full-length sequence + reserve fit the budget, recomputed from the catalog
        need = (spec.weight_bytes_per_gpu(tp) + spec.kv_cache_bytes_per_token_per_gpu(tp) * replica.max_model_len
                + RUNTIME_RESERVE_BYTES)
        assert need <= replica.gpu_memory_utilization * size_gib * GIB
    # the most replicas: no smaller TP would have fitted the same context
    for smaller in spec.tensor_parallel_sizes(tp - 1):
        need = (spec.weight_bytes_per_gpu(smaller) + RUNTIME_RESERVE_BYTES
                + spec.kv_cache_bytes_per_token_per_gpu(smaller) * host.replicas[0].max_model_len)
        assert need > 0.9 * size_gib * GIB
    assert len(host.replicas) == count // tp


# -- the guide's data points -------------------------------------------------------------------------

def test_4b_on_one_a100_40g_is_tp1():
    host = plan_one("fm9g-4b", "1xA100-40GB")
    assert host.tensor_parallel_size == 1 and [r.gpus for r in host.replicas] == [[0]]
    assert host.replicas[0].max_model_len == 32768 and host.replicas[0].gpu_memory_utilization == 0.9


def test_7b_on_one_a100_40g_is_tp1():
    assert plan_one("fm9g-7b", "1xA100-40GB").tensor_parallel_size == 1


def test_70b_on_a100_80g_is_tp4():
    host = plan_one("fm9g-70b", "4xA100-80GB")
    assert host.tensor_parallel_size == 4
    assert [r.gpus for r in host.replicas] == [[0, 1, 2, 3]]
    with pytest.raises(UserError, match="fm9g-70b needs 4 GPUs of 80 GiB"):
        plan_one("fm9g-70b", "2xA100-80GB")


def test_4b_on_eight_a100_80g_is_eight_replicas():
    host = plan_one("fm9g-4b", "8xA100-80GB")
    assert host.tensor_parallel_size == 1
    assert [(r.index, r.port, r.gpus) for r in host.replicas] == [(i, 8100 + i, [i]) for i in range(8)]


def test_real_h100_facts_plan_the_4b_model():
    facts = HostGpuFacts(gpus=recorded_gpus(SMI_FIXTURES / "h100-80gb"), cuda_driver_version="13.0")
    host = plan_deployment(config("fm9g-4b"), {"h100": facts}).hosts["h100"]
    assert host.tensor_parallel_size == 1 and host.gpu_memory_mib == 81559
    assert host.memory_per_gpu.headroom > 50 * GIB


def test_context_is_shortened_when_only_that_fits():
    host = plan_one("fm9g-7b", "1x24GiB")
    assert host.replicas[0].max_model_len == 8192
    assert any("reduced from 32768 to 8192" in note and "2 GPUs of 24 GiB" in note for note in host.notes)


# -- overrides ---------------------------------------------------------------------------------------

def test_overrides_that_work_are_used():
    host = plan_one("fm9g-4b", "8xA100-80GB", tensor_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096)
    assert [r.gpus for r in host.replicas] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert {(r.gpu_memory_utilization, r.max_model_len) for r in host.replicas} == {(0.8, 4096)}


def test_fewer_replicas_leave_gpus_idle_and_say_so():
    host = plan_one("fm9g-4b", "8xA100-80GB", replicas_per_host=2)
    assert [r.gpus for r in host.replicas] == [[0], [1]]
    assert any("2, 3, 4, 5, 6, 7 unused" in note for note in host.notes)


@pytest.mark.parametrize(("model", "gpus", "serving", "message"), [
    ("fm9g-4b", "4xA100-80GB", {"tensor_parallel_size": 3}, "cannot shard fm9g-4b .*use one of 1, 2, 4, 8, 20, 40"),
    ("fm9g-7b", "8xA100-80GB", {"tensor_parallel_size": 7}, "cannot shard fm9g-7b"),
    ("fm9g-4b", "4xA100-80GB", {"tensor_parallel_size": 8}, "needs 8 GPUs but host host .* has 4"),
    ("fm9g-70b", "4xA100-80GB", {"tensor_parallel_size": 2}, "tensor_parallel_size 2 is too small.*set tensor_parallel_size 4"),
    ("fm9g-70b", "8xA100-80GB", {"replicas_per_host": 4}, "replicas_per_host 4 leaves 2 GPU.*at most 2"),
    ("fm9g-4b", "8xA100-80GB", {"replicas_per_host": 9}, "needs at least 9 GPUs"),
    ("fm9g-4b", "4xA100-80GB", {"replicas_per_host": 3, "tensor_parallel_size": 2}, "needs 6 GPUs .* has 4"),
    ("fm9g-70b", "4xA100-80GB", {"gpu_memory_utilization": 0.5}, "needs 8 GPUs of 80 GiB .*utilization 0.5"),
    ("fm9g-7b", "1x24GiB", {"max_model_len": 32768}, "needs 2 GPUs of 24 GiB for 32768-token"),
    ("fm9g-4b", "2xA100-80GB", {"replica_base_port": 8019}, "include the gateway's serving.port 8020"),
])
def test_overrides_that_cannot_work_are_refused(model, gpus, serving, message):
    with pytest.raises(UserError, match=message):
        plan_one(model, gpus, **serving)


def test_max_model_len_above_the_model_is_capped():
    host = plan_one("fm9g-4b", "1xA100-80GB", max_model_len=65536)
    assert host.replicas[0].max_model_len == 32768
    assert any("above fm9g-4b's maximum" in note for note in host.notes)


def test_mixed_gpus_are_planned_for_the_smallest():
    plan = plan_deployment(config("fm9g-4b"), {"mixed": gpu_host(81920, 40960)})
    host = plan.hosts["mixed"]
    assert host.gpu_memory_mib == 40960 and len(host.replicas) == 2
    assert any("differ in memory" in note for note in host.notes)


def test_gpu_already_in_use_is_noted():
    host = plan_deployment(config("fm9g-4b"), {"busy": gpu_host(81920, used_mib=20000)}).hosts["busy"]
    assert any("GPU 0 has 20000 MiB in use" in note for note in host.notes)


# -- what nvidia-smi says about single GPUs (test doubles under tests/fixtures/nvidia-smi/*-double) ----

def test_a_gpu_without_a_memory_size_is_left_out_and_the_others_are_planned():
    """missing-values-double: GPU 2's memory.total is [Unknown Error]; GPU 1 has no memory.used,
    GPU 3 no compute_cap and no MIG: only GPU 2 is unusable."""
    host = plan_deployment(config("fm9g-4b"), {"h": facts_from_double(SMI_FIXTURES / "missing-values-double")}).hosts["h"]
    assert [r.gpus for r in host.replicas] == [[0], [1], [3]]
    assert host.gpu_count == 4 and host.gpu_name == "NVIDIA H100 80GB HBM3" and host.gpu_memory_mib == 81559
    assert host.notes == ["GPU 2 left out of the plan: nvidia-smi gives no memory.total for it ([Unknown Error]), "
                          "so its size is unknown; check it with `nvidia-smi -q -i 2`"]


def test_unusable_gpus_count_in_what_an_override_is_told():
    facts = facts_from_double(SMI_FIXTURES / "missing-values-double")
    with pytest.raises(UserError, match=r"needs 4 GPUs but host h \(3 x 80 GiB NVIDIA H100 80GB HBM3, 1 more unusable\) has 3"):
        plan_deployment(config("fm9g-4b", tensor_parallel_size=4), {"h": facts})


def test_a_host_whose_gpus_all_lack_a_size_is_refused():
    facts = gpu_host(81920, 81920)
    for gpu in facts.gpus:
        gpu.memory_total_mib, gpu.unreported = None, {"memory.total": "[N/A]"}
    with pytest.raises(UserError, match=r"^host h has 2 NVIDIA GPU\(s\) but none the planner can use: GPU 0: nvidia-smi "
                                        r"gives no memory.total for it \(\[N/A\]\), so its size is unknown; GPU 1: .*"
                                        r"`profile: cpu`"):
        plan_deployment(config("fm9g-4b"), {"h": facts})


def test_mixed_gpu_models_are_each_named_and_planned_for_the_smallest():
    """mixed-models-double: two H100 80GB and two A100 40GB."""
    facts = facts_from_double(SMI_FIXTURES / "mixed-models-double")
    host = plan_deployment(config("fm9g-4b"), {"h": facts}).hosts["h"]
    assert [r.gpus for r in host.replicas] == [[0], [1], [2], [3]]
    assert host.gpu_name == "mixed: 2 x NVIDIA H100 80GB HBM3 + 2 x NVIDIA A100-SXM4-40GB"
    assert host.gpu_memory_mib == 40960 and host.memory_per_gpu.total == 40960 * 2**20
    assert host.to_dict()["gpu_models"] == [
        {"name": "NVIDIA H100 80GB HBM3", "gpus": [0, 1], "memory_mib": 81559},
        {"name": "NVIDIA A100-SXM4-40GB", "gpus": [2, 3], "memory_mib": 40960},
    ]
    assert ("mixed GPU models: GPU 0, 1: NVIDIA H100 80GB HBM3 (80 GiB); GPU 2, 3: NVIDIA A100-SXM4-40GB (40 GiB); "
            "every replica is planned for the smallest usable GPU (40 GiB)") in host.notes
    assert not any("differ in memory" in note for note in host.notes)
    # Four 80 GiB GPUs would hold fm9g-70b at TP 4; sized for the 40 GiB ones, it does not fit.
    with pytest.raises(UserError, match=r"fm9g-70b needs 8 GPUs of 40 GiB .* but host h \(4 x 40 GiB mixed: "
                                        r"2 x NVIDIA H100 80GB HBM3 \+ 2 x NVIDIA A100-SXM4-40GB\) has 4"):
        plan_deployment(config("fm9g-70b"), {"h": facts})


def test_mig_enabled_host_is_refused_naming_the_gpu_and_the_fix():
    """mig-enabled-double: GPU 0 of two A100s has MIG mode on."""
    with pytest.raises(UserError) as refused:
        plan_deployment(config("fm9g-4b"), {"mig": facts_from_double(SMI_FIXTURES / "mig-enabled-double")})
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("host mig: MIG mode is enabled on GPU 0 (NVIDIA A100-SXM4-80GB); ")
    assert "MIG device UUIDs" in message and "`sudo nvidia-smi -i 0 -mig 0`" in message
    assert "GPU 1" not in message


def test_every_mig_enabled_gpu_is_named():
    facts = gpu_host(81920, 81920, 81920)
    facts.gpus[0].mig_mode = facts.gpus[2].mig_mode = "Enabled"
    with pytest.raises(UserError, match=r"enabled on GPU 0 \(NVIDIA Test GPU\), 2 \(NVIDIA Test GPU\);.*"
                                        r"`sudo nvidia-smi -i 0 -mig 0` and `sudo nvidia-smi -i 2 -mig 0`"):
        plan_deployment(config("fm9g-4b"), {"h": facts})


def test_mig_mode_that_could_not_be_read_is_refused_too():
    facts = gpu_host(81920, 81920)
    facts.gpus[1].unreported = {"mig.mode.current": "[Unknown Error]"}
    with pytest.raises(UserError, match=r"host h: nvidia-smi could not read the MIG mode of GPU 1 \(\[Unknown Error\]\)"):
        plan_deployment(config("fm9g-4b"), {"h": facts})


def test_no_mig_on_the_gpu_is_planned():
    facts = gpu_host(81920)
    facts.gpus[0].unreported = {"mig.mode.current": "[N/A]"}
    assert plan_deployment(config("fm9g-4b"), {"h": facts}).hosts["h"].replicas[0].gpus == [0]


def test_a_duplicate_gpu_index_is_refused_as_malformed():
    """duplicate-index-double: GPU 0 listed twice; no plan by index can be trusted."""
    facts = facts_from_double(SMI_FIXTURES / "duplicate-index-double")
    with pytest.raises(UserError, match=r"host h has no usable NVIDIA GPU \(nvidia-smi output is malformed: GPU index 0 "
                                        r"is listed twice \(lines 1 and 2\)\)"):
        plan_deployment(config("fm9g-4b"), {"h": facts})


# -- CPU hosts and profile mismatches -----------------------------------------------------------------

def test_cpu_host_gets_the_cpu_plan():
    plan = plan_deployment(config("tiny-random", "cpu", replicas_per_host=2, max_model_len=4096), {"sandbox1": NO_GPU})
    host = plan.hosts["sandbox1"]
    assert host.accelerator == "cpu" and host.tensor_parallel_size == 1 and host.memory_per_gpu is None
    assert [r.to_dict() for r in host.replicas] == [
        {"index": i, "port": 8100 + i, "tensor_parallel_size": 1, "gpus": [], "gpu_memory_utilization": None,
         "max_model_len": 1024}  # min(catalog 1024, override 4096)
        for i in range(2)
    ]
    assert any("no NVIDIA GPU" in note for note in host.notes)


def test_cpu_default_is_one_replica():
    assert len(plan_deployment(config("tiny-random", "cpu"), {"h": NO_GPU}).hosts["h"].replicas) == 1


def test_cpu_context_follows_the_kv_cache_space():
    host = plan_deployment(config("fm9g-4b", "cpu"), {"h": NO_GPU}).hosts["h"]
    assert host.replicas[0].max_model_len == 16384  # 1 GiB / 62 KiB per token, rounded down to a power of 2
    with pytest.raises(UserError, match="cpu_kvcache_space_gib"):
        plan_deployment(config("fm9g-4b", "cpu", max_model_len=32768), {"h": NO_GPU})


def test_cpu_host_refuses_tensor_parallelism():
    with pytest.raises(UserError, match="has no GPU"):
        plan_deployment(config("tiny-random", "cpu", tensor_parallel_size=2), {"h": NO_GPU})


def test_gpu_less_host_with_the_gpu_profile_is_refused():
    with pytest.raises(UserError, match=r"host h has no usable NVIDIA GPU \(nvidia-smi not found\) but profile "
                                        r"cuda121 needs one; set `profile: cpu`"):
        plan_deployment(config("fm9g-4b", "cuda121"), {"h": NO_GPU})


def test_gpu_host_with_the_cpu_profile_is_refused():
    with pytest.raises(UserError, match="has 1 NVIDIA GPU.* profile is cpu; set `profile: cuda121 or cuda130`"):
        plan_deployment(config("fm9g-4b", "cpu"), {"h": gpu_host(81920)})


def test_old_driver_double_is_refused_for_cuda121():
    """The old-driver facts are a labelled test double (tests/fixtures/nvidia-smi/old-driver-cuda118-double)."""
    double = SMI_FIXTURES / "old-driver-cuda118-double"
    facts = HostGpuFacts(gpus=recorded_gpus(double),
                         cuda_driver_version=parse_cuda_version((double / "nvidia-smi.txt").read_text()))
    with pytest.raises(UserError, match=r"host old: the NVIDIA driver supports CUDA up to 11\.8 but the stack "
                                        r"needs CUDA 12\.1; upgrade .*\(profile cuda121\)"):
        plan_deployment(config("fm9g-4b"), {"old": facts})
    # Hypothetical hosts skip the driver check.
    assert plan_deployment(config("fm9g-4b"), {"old": facts}, check_driver=False).hosts["old"].tensor_parallel_size == 1


def test_no_hosts_is_an_error():
    with pytest.raises(UserError, match="no hosts to plan"):
        plan_deployment(config(), {})


# -- output forms ----------------------------------------------------------------------------------------

def test_replicas_and_json():
    plan = plan_deployment(config("fm9g-70b"), {"a": gpu_host(*[81920] * 8), "b": gpu_host(*[81920] * 4)})
    assert set(plan.hosts) == {"a", "b"}
    assert [r.to_dict() for r in plan.hosts["b"].replicas] == [{
        "index": 0, "port": 8100, "tensor_parallel_size": 4, "gpus": [0, 1, 2, 3], "gpu_memory_utilization": 0.9,
        "max_model_len": 32768}]
    assert [r.gpus for r in plan.hosts["a"].replicas] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["model"] == "fm9g-70b" and data["profile"] == "cuda121"
    assert data["hosts"]["a"]["memory_per_gpu"]["full_length_sequences"] >= 1
    assert data["hosts"]["a"]["cuda_driver_version"] == "13.0"


@pytest.mark.parametrize(("spec", "count", "mib"), [
    ("4xA100-80GB", 4, 81920), ("1xH100", 1, 81920), ("8x40GiB", 8, 40960), ("2 x nvidia a100 40gb", 2, 40960),
    ("1x24GB", 1, 24576),
])
def test_hypothetical_hosts(spec, count, mib):
    facts = hypothetical_host(spec)
    assert facts.gpu_count == count and {gpu.memory_total_mib for gpu in facts.gpus} == {mib}


@pytest.mark.parametrize(("spec", "message"), [
    ("A100", "is not COUNTxGPU"), ("0xA100-80GB", "must be 1 to 64"), ("4xB100", "unknown GPU 'B100'"),
    ("2x0.5GiB", "at least 1 GiB"),
])
def test_bad_hypothetical_hosts(spec, message):
    with pytest.raises(UserError, match=message):
        hypothetical_host(spec)
