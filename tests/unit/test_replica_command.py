"""A replica's command line and environment read from the serve role's rendered systemd unit, the
way systemd reads them (the GPU proof launches exactly this where no systemd runs)."""

from fm9g_deploy.config import parse_config
from fm9g_deploy.hostvars import replica_runtime_vars
from fm9g_deploy.profiles import load_profile
from fm9g_deploy.replica_command import replica_launch

REPLICA = {"index": 1, "port": 8101, "tensor_parallel_size": 2, "gpus": [2, 3], "gpu_memory_utilization": 0.85,
           "max_model_len": 8192}


def launch(profile: str = "cuda130", **extra):
    config = parse_config(f"profile: {profile}\nmodel: {{name: fm9g-4b}}\n")
    values = {**replica_runtime_vars(config, load_profile(profile), "the-key"), **extra}
    return replica_launch(values, REPLICA, hostname="gpu-a")


def test_the_supervisor_runs_vllm_with_the_planned_values_filled_in():
    replica = launch()
    assert replica.argv[:2] == ["/opt/fm9g/envs/fm9g-vllm025/bin/python", "/usr/local/lib/fm9g/fm9g_replica_supervisor.py"]
    assert replica.argv[replica.argv.index("--state-file") + 1] == "/var/lib/fm9g/replica-1.state.json"
    vllm = replica.vllm_argv()
    assert vllm[:3] == ["/opt/fm9g/envs/fm9g-vllm025/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    values = {flag: vllm[vllm.index(flag) + 1] for flag in ("--port", "--tensor-parallel-size", "--max-model-len",
                                                            "--gpu-memory-utilization", "--model", "--shutdown-timeout")}
    assert values == {"--port": "8101", "--tensor-parallel-size": "2", "--max-model-len": "8192",
                      "--gpu-memory-utilization": "0.85", "--model": "/opt/fm9g/models/fm9g-4b/current",
                      "--shutdown-timeout": "120"}
    assert not any("${" in word for word in replica.argv)


def test_the_environment_is_the_units_and_its_files():
    replica = launch(fm9g_serve_extra_env={"NCCL_NVLS_ENABLE": "0"})
    environment = replica.environment
    assert environment["CUDA_VISIBLE_DEVICES"] == "2,3" and environment["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert environment["VLLM_API_KEY"] == "the-key" and "the-key" not in replica.argv
    assert environment["NCCL_NVLS_ENABLE"] == "0" and environment["VLLM_HOST_IP"] == "127.0.0.1"


def test_the_cpu_profile_has_no_gpus_and_its_kv_cache_space():
    replica = launch("cpu")
    assert "CUDA_VISIBLE_DEVICES" not in replica.environment
    assert replica.environment["VLLM_CPU_KVCACHE_SPACE"] == "1" and "--enforce-eager" in replica.vllm_argv()
