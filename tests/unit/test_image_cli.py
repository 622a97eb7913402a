"""`fm9g-deploy image`: bad input is one line and exit 2; only a smoke-tested image is pushed."""

from __future__ import annotations

import pytest
from rich.console import Console

from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.image import manifest as manifests
from fm9g_deploy.image.transfer import push, registry_reference
from tests.conftest import run_cli

NO_ENGINE = "unix:///nonexistent/fm9g-no-engine.sock"
TAG = "fm9g-vllm:cpu-0123456789ab"
IMAGE_ID = "sha256:" + "1" * 64


class FakeImage:
    """Test double for a docker SDK Image (no registry can be reached here)."""

    def __init__(self, image_id=IMAGE_ID):
        self.id = image_id
        self.tags_added = []

    def tag(self, repository, tag=None):
        self.tags_added.append((repository, tag))
        return True


class FakeImages:
    def __init__(self, image, push_chunks):
        self.image, self.push_chunks, self.pushed, self.removed = image, push_chunks, [], []

    def get(self, name):
        from docker.errors import ImageNotFound

        if self.image is None:
            raise ImageNotFound(name)
        return self.image

    def push(self, repository, tag=None, stream=False, decode=False):
        self.pushed.append({"repository": repository, "tag": tag, "stream": stream, "decode": decode})
        return iter(self.push_chunks)

    def remove(self, name):
        self.removed.append(name)


class FakeClient:
    """Test double for docker.DockerClient: records the SDK calls push makes."""

    def __init__(self, image=None, push_chunks=()):
        self.images = FakeImages(image, list(push_chunks))


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("FM9G_DEPLOY_STATE_DIR", str(tmp_path))
    return tmp_path


def write(smoke, image_id=IMAGE_ID):
    manifests.write_manifest({"image": TAG, "image_id": image_id, "profile": "cpu", "smoke_test": smoke})


def test_help_is_light_and_lists_the_actions():
    result = run_cli("image", "--help")
    assert result.returncode == 0
    for action in ("build", "push", "save", "list"):
        assert action in result.stdout


@pytest.mark.parametrize("args,message", [
    (("image", "build", "--profile", "nope"), "unknown stack profile 'nope'"),
    (("image", "push", "--profile", "cpu", "--registry", "http://not a host"), "is not a registry address"),
    (("image", "build", "--profile", "cpu", "--smoke-timeout", "1"), "--smoke-timeout 1 is too short"),
    (("image", "build", "--profile", "cuda121", "--dry-run"), "artifacts add FILE --family fm9g-4b-7b-70b"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run_cli(*args, env={"DOCKER_HOST": NO_ENGINE})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_dry_run_renders_without_an_engine(tmp_path):
    result = run_cli("image", "build", "--profile", "cpu", "--dry-run", "--cache-dir", str(tmp_path),
                     env={"DOCKER_HOST": NO_ENGINE})
    assert result.returncode == 0, result.stderr
    assert "VLLM_ARGS=--enforce-eager" in result.stdout
    assert "missing from the artifact cache" in result.stdout


def test_build_with_an_empty_cache_names_the_fetch_before_touching_the_engine(tmp_path):
    result = run_cli("image", "build", "--profile", "cpu", "--cache-dir", str(tmp_path),
                     env={"DOCKER_HOST": NO_ENGINE})
    assert result.returncode == 2
    assert "run `fm9g-deploy artifacts fetch --profile cpu`" in result.stderr


@pytest.mark.parametrize("registry,expected", [
    ("registry.example.com:5000", "registry.example.com:5000/fm9g-vllm"),
    ("https://registry.example.com/team/", "registry.example.com/team/fm9g-vllm"),
    ("127.0.0.1:5000/fm9g", "127.0.0.1:5000/fm9g/fm9g-vllm"),
])
def test_registry_reference(registry, expected):
    assert registry_reference(registry, TAG) == (expected, "cpu-0123456789ab")


@pytest.mark.parametrize("smoke,image_id,why", [
    (None, IMAGE_ID, "it was not smoke-tested"),
    ({"passed": False, "problem": "the container exited with code 1"}, IMAGE_ID, "exited with code 1"),
    ({"passed": True}, "sha256:" + "2" * 64, "not the sha256:222"),
])
def test_untested_or_rebuilt_images_are_refused(state, smoke, image_id, why):
    write(smoke, image_id)
    with pytest.raises(UserError, match=why):
        manifests.tested_image(FakeClient(FakeImage()), TAG, "fm9g-deploy image build --profile cpu")


def test_image_without_manifest_is_refused(state):
    with pytest.raises(UserError, match="has no build manifest"):
        manifests.tested_image(FakeClient(FakeImage()), TAG, "fm9g-deploy image build --profile cpu")


def test_tested_image_is_tagged_under_the_registry_and_pushed_with_the_sdk(state):
    write({"passed": True})
    client = FakeClient(FakeImage(), push_chunks=[{"status": "Pushing", "id": "abc"},
                                                  {"status": "Pushed", "id": "abc"}])
    _, image = manifests.tested_image(client, TAG, "fm9g-deploy image build --profile cpu")
    reference = push(client, image, TAG, "registry.example.com:5000", Console(quiet=True))
    assert reference == "registry.example.com:5000/fm9g-vllm:cpu-0123456789ab"
    assert image.tags_added == [("registry.example.com:5000/fm9g-vllm", "cpu-0123456789ab")]
    assert client.images.pushed == [{"repository": "registry.example.com:5000/fm9g-vllm", "tag": "cpu-0123456789ab",
                                     "stream": True, "decode": True}]


def test_a_registry_error_fails_the_push_and_drops_the_registry_tag(state):
    client = FakeClient(FakeImage(), push_chunks=[{"error": "denied: requested access to the resource is denied"}])
    with pytest.raises(OperationFailed, match="denied"):
        push(client, client.images.image, TAG, "registry.example.com", Console(quiet=True))
    assert client.images.removed == ["registry.example.com/fm9g-vllm:cpu-0123456789ab"]
