"""The content-addressed cache: operator wheels told apart by hash, model tarballs pinned, verify."""

from __future__ import annotations

import json

import pytest

from fm9g_deploy.artifacts.add import add_model_tarball, add_operator_wheel
from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.verify import verify
from fm9g_deploy.errors import UserError
from tests.conftest import run_cli
from tests.fixtures.artifacts.wheels import make_wheel, sha256_of

WHEEL_NAME = "vllm-0.5.0.dev0+cu122-cp310-cp310-linux_x86_64.whl"


def fm9g_wheel(folder, payload):
    """Stand-ins for the FM9G team's two vLLM builds: same file name, different bytes."""
    return make_wheel(folder, "vllm", "0.5.0.dev0+cu122", tag="cp310-cp310-linux_x86_64", payload=payload,
                      filename=WHEEL_NAME)


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache")


def test_same_named_wheels_of_two_families_coexist(cache, tmp_path):
    big = fm9g_wheel(tmp_path / "a", "4b-7b-70b build")
    small = fm9g_wheel(tmp_path / "b", "2b-8b build")
    assert big.name == small.name and sha256_of(big) != sha256_of(small)

    first = add_operator_wheel(cache, big, "fm9g-4b-7b-70b")
    second = add_operator_wheel(cache, small, "fm9g-2b-8b")

    assert first.path == cache.root / "sha256" / sha256_of(big) / WHEEL_NAME
    assert second.path == cache.root / "sha256" / sha256_of(small) / WHEEL_NAME
    assert first.path.read_bytes() == big.read_bytes() and second.path.read_bytes() == small.read_bytes()
    registered = cache.operator_wheels()
    assert registered["fm9g-4b-7b-70b"]["sha256"] == sha256_of(big)
    assert registered["fm9g-2b-8b"]["sha256"] == sha256_of(small)


def test_one_file_cannot_be_both_families(cache, tmp_path):
    wheel = fm9g_wheel(tmp_path, "one build")
    add_operator_wheel(cache, wheel, "fm9g-4b-7b-70b")
    with pytest.raises(UserError, match="already registered as the fm9g-4b-7b-70b wheel"):
        add_operator_wheel(cache, wheel, "fm9g-2b-8b")


def test_replacing_a_registered_wheel_needs_replace(cache, tmp_path):
    old = fm9g_wheel(tmp_path / "old", "old")
    new = fm9g_wheel(tmp_path / "new", "new")
    add_operator_wheel(cache, old, "fm9g-4b-7b-70b")
    with pytest.raises(UserError, match="--replace"):
        add_operator_wheel(cache, new, "fm9g-4b-7b-70b")
    added = add_operator_wheel(cache, new, "fm9g-4b-7b-70b", replace=True)
    assert cache.operator_wheels()["fm9g-4b-7b-70b"]["sha256"] == added.sha256 == sha256_of(new)
    assert cache.has(sha256_of(old), WHEEL_NAME)  # the old file is kept; only the registration moved


def test_a_renamed_download_is_stored_under_the_wheel_name(cache, tmp_path):
    wheel = fm9g_wheel(tmp_path, "renamed")
    renamed = wheel.rename(tmp_path / "vllm (1).whl")
    added = add_operator_wheel(cache, renamed, "fm9g-2b-8b")
    assert added.path.name == WHEEL_NAME


@pytest.mark.parametrize("problem, build, message", [
    ("wrong package", lambda d: make_wheel(d, "notvllm", "0.5.0.dev0+cu122"), r"expects vllm 0\.5\.0\.dev0\+cu122"),
    ("wrong version", lambda d: make_wheel(d, "vllm", "0.6.0"), "holds vllm 0.6.0"),
    ("not a wheel", lambda d: (d / "x.whl").write_bytes(b"plain text") and d / "x.whl", "not a readable wheel"),
])
def test_add_refuses_files_that_are_not_the_fm9g_wheel(cache, tmp_path, problem, build, message):
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(UserError, match=message):
        add_operator_wheel(cache, build(tmp_path), "fm9g-4b-7b-70b")
    assert not (cache.root / "sha256").exists()


def test_unknown_family_names_the_choices(cache, tmp_path):
    with pytest.raises(UserError, match="choose one of fm9g-2b-8b, fm9g-4b-7b-70b"):
        add_operator_wheel(cache, fm9g_wheel(tmp_path, "x"), "fm9g-13b")


def test_model_tarball_added_by_hand_is_pinned_and_enforced(cache, tmp_path):
    tarball = tmp_path / "9G7B_MHA.tar"
    tarball.write_bytes(b"weights v1" * 1000)
    added = add_model_tarball(cache, tarball, "fm9g-7b")
    assert any("no published checksum" in note for note in added.notes)
    assert cache.pins()["fm9g-7b"]["sha256"] == sha256_of(tarball)

    tarball.write_bytes(b"weights v2" * 1000)
    with pytest.raises(UserError, match="does not match the fm9g-7b tarball pinned"):
        add_model_tarball(cache, tarball, "fm9g-7b")


def test_verify_finds_corrupt_and_missing_files(cache, tmp_path):
    wheel = fm9g_wheel(tmp_path, "to be damaged")
    added = add_operator_wheel(cache, wheel, "fm9g-4b-7b-70b")
    tarball = tmp_path / "9G7B_MHA.tar"
    tarball.write_bytes(b"w" * 4096)
    pinned = add_model_tarball(cache, tarball, "fm9g-7b")

    assert verify(cache, []).ok
    added.path.write_bytes(b"bit rot")
    pinned.path.unlink()
    report = verify(cache, [])
    assert [bad.path for bad in report.corrupt] == [added.path]
    assert len(report.missing) == 1 and "model fm9g-7b" in report.missing[0]


def test_cli_add_then_verify(tmp_path):
    wheel = fm9g_wheel(tmp_path, "cli")
    cache_dir = tmp_path / "cache"
    added = run_cli("artifacts", "add", str(wheel), "--family", "fm9g-4b-7b-70b", "--cache-dir", str(cache_dir),
                    timeout=120)
    assert added.returncode == 0, added.stderr
    assert sha256_of(wheel) in added.stdout and "artifacts lock --profile cuda121" in added.stderr
    assert json.loads((cache_dir / "operator-wheels.json").read_text())["families"]["fm9g-4b-7b-70b"]

    ok = run_cli("artifacts", "verify", "--cache-dir", str(cache_dir), timeout=120)
    assert ok.returncode == 0, ok.stderr

    (cache_dir / "sha256" / sha256_of(wheel) / WHEEL_NAME).write_bytes(b"tampered")
    bad = run_cli("artifacts", "verify", "--cache-dir", str(cache_dir), timeout=120)
    assert bad.returncode == 1
    assert "CORRUPT" in bad.stderr and bad.stderr.strip().splitlines()[-1].startswith("fm9g-deploy: failed: ")


def test_cli_add_of_a_missing_file_is_one_line(tmp_path):
    result = run_cli("artifacts", "add", str(tmp_path / "nope.whl"), "--family", "fm9g-2b-8b",
                     "--cache-dir", str(tmp_path / "cache"), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fm9g-deploy: error: {tmp_path / 'nope.whl'} is not a file; pass the path of the file to add"]
