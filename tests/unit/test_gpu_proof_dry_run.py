"""The multi-GPU runs of the GPU proof planned and rendered without GPUs (run.py dry-run): the
planner's layout and each replica's command line and environment as the serve role renders them."""

import importlib.util

from tests.conftest import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("gpu_proof_run", PROJECT_ROOT / "benchmarks/gpu_proof/run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_tp2_replica_spans_two_gpus_in_its_command_and_environment():
    result = run.dry_run("2xH200", "fm9g-7b", {"tensor_parallel_size": 2})
    [replica] = result["replicas"]
    assert replica["replica"]["gpus"] == [0, 1]
    assert _flag(replica["argv"], "--tensor-parallel-size") == "2"
    assert replica["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    # NVLink multicast stays off in every process the replica starts (its workers inherit these),
    # vLLM's symmetric-memory and FlashInfer all-reduce paths included.
    from fm9g_deploy.replica_spec import MULTICAST_OFF_ENVIRONMENT

    assert MULTICAST_OFF_ENVIRONMENT.items() <= replica["environment"].items()
    assert '"fuse_allreduce_rms": false' in _flag(replica["argv"], "--compilation-config")


def test_two_tp1_replicas_get_a_gpu_and_a_port_each():
    result = run.dry_run("2xH200", "fm9g-4b")
    layout = [(r["environment"]["CUDA_VISIBLE_DEVICES"], _flag(r["argv"], "--port")) for r in result["replicas"]]
    assert layout == [("0", "8100"), ("1", "8101")]


def test_70b_on_four_h200s_as_the_planner_lays_it_out_and_forced_to_tp4():
    planned = run.dry_run("4xH200", "fm9g-70b")
    assert [r["environment"]["CUDA_VISIBLE_DEVICES"] for r in planned["replicas"]] == ["0,1", "2,3"]
    assert planned["plan"]["memory_per_gpu"]["headroom_gib"] >= 0
    forced = run.dry_run("4xH200", "fm9g-70b", {"tensor_parallel_size": 4})
    [replica] = forced["replicas"]
    assert replica["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert _flag(replica["argv"], "--tensor-parallel-size") == "4"
    assert "<key>" not in " ".join(replica["argv"]) and "VLLM_API_KEY" not in replica["environment"]
