"""The multi-GPU runs of the GPU proof planned and rendered without GPUs (run.py dry-run): the
planner's layout and each replica's command line and environment as the serve role renders them."""

import importlib.util
import json

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


def test_a_dummy_load_writes_the_config_and_tokenizer_but_no_weights(tmp_path, monkeypatch):
    """`run.py serve --model fm9g-70b --load-format dummy`: what the TP 4 run serves from, with no
    151 GiB checkpoint: FM9G's config mapped as provision maps it, the tokenizer, no weight file."""
    import json

    monkeypatch.setattr(run, "MODEL", "fm9g-70b")
    monkeypatch.setattr(run, "LOAD_FORMAT", "dummy")
    results = run.Results(tmp_path)
    model_dir = tmp_path / "releases" / "gpu-proof" / "fm9g-70b"
    run.build_checkpoint(model_dir, results)
    assert not list(model_dir.glob("*.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"]) == (80, 8192, 64, 64)
    assert config["architectures"] == ["MiniCPMForCausalLM"] and (model_dir / "config.fm9g.json").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    recorded = results.data["checkpoint"]
    assert recorded["load_format"] == "dummy" and 7.9e10 < recorded["parameters"] < 8.2e10  # about 151 GiB in bf16
    # 70B's own scales are unpublished: the shape proof borrows 4B's, and says which
    original = json.loads((model_dir / "config.fm9g.json").read_text())
    assert recorded["scales_from_fm9g_4b"] and all(original[key] is not None for key in recorded["scales_from_fm9g_4b"])


def test_the_harness_adds_the_dummy_load_to_the_rendered_launch_only(tmp_path, monkeypatch):
    from fm9g_deploy.planner import hypothetical_host

    import dataclasses

    facts = dataclasses.replace(hypothetical_host("1xH200"), cuda_driver_version="13.0")
    monkeypatch.setattr(run, "gpu_facts", lambda: facts)  # test double: no nvidia-smi here
    monkeypatch.setattr(run, "MODEL", "fm9g-7b")
    monkeypatch.setattr(run, "LOAD_FORMAT", "dummy")
    launch, replica, _ = run.plan_and_render(run.Results(tmp_path))
    assert launch.argv[-2:] == ["--load-format", "dummy"] and replica["tensor_parallel_size"] == 1
    assert "--load-format" not in replica["argv"]  # the serve role's spec itself never has it
