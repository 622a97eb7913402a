"""The recorded GPU proof (benchmarks/gpu_proof/results-h200.json): CI has no GPU, so this checks the
record of the run on an H200 made with benchmarks/gpu_proof/run.py against the issue's goals."""

import json

from fm9g_deploy.tinymodel import write_tiny_tarball
from tests.conftest import PROJECT_ROOT

RECORD = json.loads((PROJECT_ROOT / "benchmarks/gpu_proof/results-h200.json").read_text("utf-8"))


def test_it_ran_on_an_h200_with_the_planners_settings():
    gpus = RECORD["plan"]["gpu_facts"]["gpus"]
    assert len(gpus) == 1 and gpus[0]["name"] == "NVIDIA H200"
    assert RECORD["plan"]["replica"] == {"index": 0, "port": 8100, "tensor_parallel_size": 1, "gpus": [0],
                                         "gpu_memory_utilization": 0.9, "max_model_len": 32768}


def test_the_served_command_is_the_serve_roles_for_the_cuda130_profile():
    argv = RECORD["rendered_command"]["argv"]
    vllm = argv[argv.index("--") + 1:]
    assert argv[1].endswith("fm9g_replica_supervisor.py")
    assert vllm[:3] == ["/opt/fm9g/envs/fm9g-vllm025/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert vllm[vllm.index("--model") + 1] == "/opt/fm9g/models/fm9g-4b/current"
    assert "--shutdown-timeout" in vllm and "--api-key" not in vllm
    assert {"VLLM_API_KEY", "CUDA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE"} <= set(RECORD["rendered_command"]["environment"])


def test_fm9g_4b_shapes_served_as_minicpm():
    checkpoint = RECORD["checkpoint"]
    assert checkpoint["served_as"] == "MiniCPMForCausalLM" and checkpoint["parameters"] == 4_129_681_920


def test_memory_within_five_percent_of_the_planner():
    errors = RECORD["memory"]["relative_error"]
    assert set(errors) == {"weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency"}
    assert all(abs(error) < 0.05 for error in errors.values()), errors


def test_ready_times_and_the_key():
    assert 0 < RECORD["ready_warm_s"] < RECORD["ready_cold_s"]
    assert RECORD["api_key"] == {"no_key": 401, "wrong_key": 401, "right_key": 200}


def test_bench_agrees_with_vllm_bench_serve_within_ten_percent():
    bench = RECORD["bench"]
    assert abs(bench["ratio_fm9g_to_vllm"] - 1) < 0.10
    assert all(run["failed"] == 0 for runs in bench["runs"].values() for run in runs)


def test_verify_gpu_checks_passed_against_the_running_replica():
    checks = {check["check"]: check["outcome"] for check in RECORD["verify_gpu"]["checks"]}
    assert checks == {"torch sees the host's planned GPUs": "passed", "torch sees the replica's GPUs": "passed",
                      "nvidia-smi on the host shows the GPUs the plan was made for": "passed",
                      "the running replica sees exactly its planned GPUs": "passed"}


def test_numerical_proof_in_bf16_on_the_gpu():
    numerics = RECORD["numerics"]
    for label in ("tiny-random", "tiny-random-mha"):
        assert numerics[label]["passed"] and numerics[label]["dtype"] == "bfloat16"
        assert numerics[label]["device"] == "NVIDIA H200" and numerics[label]["versions"]["vllm"] == "0.25.0"
    assert not numerics["tiny-random-wrong"]["passed"]
    assert numerics["tiny-random-wrong"]["max_abs_difference"] > 3 * numerics["tiny-random"]["tolerance"]


def test_the_numerical_proof_ran_on_the_checkpoints_this_code_builds(tmp_path):
    """The record stays true of the code: the tiny models are rebuilt byte for byte."""
    for label, name in (("tiny-random", "tiny-random"), ("tiny-random-mha", "tiny-random-mha")):
        built = write_tiny_tarball(tmp_path / label, name=name)
        assert RECORD["numerics_runs"][label]["checkpoint_sha256"] == built.sha256, label


# The same serve step again with `serving.nvlink_multicast: false` (what the multi-GPU machines
# require), recorded in results-h200-multicast-off.json: vLLM 0.25 takes the switches and serves.
MULTICAST_OFF = json.loads((PROJECT_ROOT / "benchmarks/gpu_proof/results-h200-multicast-off.json").read_text("utf-8"))


def test_with_multicast_off_the_replica_carried_every_switch_and_served():
    from fm9g_deploy.replica_spec import MULTICAST_OFF_ENVIRONMENT

    argv = MULTICAST_OFF["rendered_command"]["argv"]
    assert json.loads(argv[argv.index("--compilation-config") + 1]) == {"pass_config": {"fuse_allreduce_rms": False}}
    assert set(MULTICAST_OFF_ENVIRONMENT) <= set(MULTICAST_OFF["rendered_command"]["environment"])
    assert MULTICAST_OFF["ready_cold_s"] > 0
    assert MULTICAST_OFF["api_key"] == {"no_key": 401, "wrong_key": 401, "right_key": 200}
    assert MULTICAST_OFF["verify_gpu"]["exitstatus"] == 0
    runs = MULTICAST_OFF["bench"]["runs"]
    assert all(run["failed"] == 0 and run["output_throughput"] > 0 for tool in runs.values() for run in tool)
    assert abs(MULTICAST_OFF["memory"]["relative_error"]["kv_cache_gib"]) <= 0.05


# FM9G 7B's shapes from their config alone (`run.py serve --model fm9g-7b --load-format dummy`): the
# path the 70B run at TP 4 takes, tried on the one GPU lent (results-h200-7b-dummy.json).
SEVEN_B_DUMMY = json.loads((PROJECT_ROOT / "benchmarks/gpu_proof/results-h200-7b-dummy.json").read_text("utf-8"))


def test_7b_shapes_served_from_their_config_alone_as_the_planner_predicted():
    checkpoint = SEVEN_B_DUMMY["checkpoint"]
    assert checkpoint["load_format"] == "dummy" and checkpoint["served_as"] == "MiniCPMForCausalLM"
    argv = SEVEN_B_DUMMY["rendered_command"]["argv"]
    assert argv[-2:] == ["--load-format", "dummy"] and argv[argv.index("--model") + 1].endswith("/fm9g-7b/current")
    assert SEVEN_B_DUMMY["plan"]["replica"]["tensor_parallel_size"] == 1
    # the goal: vLLM's memory figures within 5 % of the planner's
    assert all(abs(error) <= 0.05 for error in SEVEN_B_DUMMY["memory"]["relative_error"].values())
    assert SEVEN_B_DUMMY["verify_gpu"]["exitstatus"] == 0
    runs = SEVEN_B_DUMMY["bench"]["runs"]
    assert all(run["failed"] == 0 and run["output_throughput"] > 0 for tool in runs.values() for run in tool)
