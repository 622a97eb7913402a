"""The serving image's build, rendered without Docker: base, build args, tag and context files.

The guide's GPU image cannot be built here (no CUDA base image, no FM9G vLLM wheel), so these
tests check that what `docker build` would get for it is complete and consistent with the
Dockerfile; the CPU image is built for real by tests/integration/test_image.py.
"""

from __future__ import annotations

import re

import docker.utils
import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.lock import Lock, LockedArtifact, LockTarget, load_lock
from fm9g_deploy.artifacts.publish import requirements_text
from fm9g_deploy.errors import UserError
from fm9g_deploy.image.build import FIXED_MTIME, assemble_context
from fm9g_deploy.image.render import CONTEXT_SOURCE, CUDA_BASES, lock_sha256, plan_build
from fm9g_deploy.profiles import load_profile
from tests.fixtures.artifacts.wheels import make_wheel, sha256_of

DOCKERFILE = (CONTEXT_SOURCE / "Dockerfile").read_text()
FAMILY = "fm9g-4b-7b-70b"
VLLM_WHEEL = "vllm-0.5.0.dev0+cu122-cp310-cp310-linux_x86_64.whl"


def gpu_lock_with_registered_wheel() -> Lock:
    """The committed cuda121 lock plus a set for the FM9G vLLM wheel family.

    Test double: the operator's wheel exists only behind a cloud-drive link, so its entry (and
    sha256) is made up; everything else is the real lock.
    """
    data = load_lock("cuda121").model_dump(mode="json")
    data["sets"][FAMILY] = "base plus the FM9G vLLM wheel"
    data["unregistered_families"] = [f for f in data["unregistered_families"] if f != FAMILY]
    for artifact in data["artifacts"]:
        if "base" in artifact["sets"]:
            artifact["sets"].append(FAMILY)
    data["artifacts"].append({"name": "vllm", "version": "0.5.0.dev0+cu122", "filename": VLLM_WHEEL, "url": None,
                              "sha256": "ab" * 32, "size": 1, "kind": "operator-wheel", "sets": [FAMILY],
                              "family": FAMILY})
    from tests.unit.test_conda_lock import with_conda_packages

    return with_conda_packages(Lock.model_validate(data))


def dockerfile_args() -> dict[str, str | None]:
    """ARG name -> default (None when it has none), over every stage."""
    found: dict[str, str | None] = {}
    for name, default in re.findall(r"^ARG (\w+)(?:=(.*))?$", DOCKERFILE, re.M):
        found[name] = default if default != "" or f"ARG {name}=" in DOCKERFILE else None
    return found


def copied_sources() -> list[str]:
    """Context paths the Dockerfile COPYs (not stage-to-stage copies)."""
    return [src for src in re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, re.M)]


@pytest.fixture
def gpu_plan(tmp_path):
    return plan_build(load_profile("cuda121"), gpu_lock_with_registered_wheel(), Cache(tmp_path / "cache"),
                      lock_digest="c" * 64, model="fm9g-4b")


def test_gpu_image_is_built_from_the_pinned_cuda_runtime_and_the_guides_env(gpu_plan):
    assert gpu_plan.base == CUDA_BASES["12.1"]
    assert gpu_plan.base.startswith("nvidia/cuda:12.1.1-runtime-ubuntu22.04@sha256:")
    assert re.fullmatch(r".*@sha256:[0-9a-f]{64}", gpu_plan.base)
    assert not gpu_plan.base_is_local_rootfs
    args = gpu_plan.buildargs
    assert args["ENV_MANAGER"] == "conda"
    assert args["ENV_PYTHON"] == "3.10.16"
    assert args["ENV_PREFIX"] == "/opt/fm9g/envs/fm-9g"
    assert args["ACCELERATOR"] == "cuda"
    assert args["INSTALL_SET"] == FAMILY
    assert args["VLLM_ARGS"] == ""  # the guide's launch line has no extra flags
    assert gpu_plan.tag == f"fm9g-vllm:cuda121-{FAMILY}-cccccccccccc"


def test_gpu_build_context_is_complete(gpu_plan):
    lock = gpu_lock_with_registered_wheel()
    files = lock.python_files(FAMILY)
    listing = gpu_plan.context_listing
    # every wheel of the set, the FM9G vLLM wheel and the guide's torch among them
    assert {f"wheels/{a.filename}" for a in files} <= set(listing)
    assert f"wheels/{VLLM_WHEEL}" in listing
    assert "wheels/torch-2.3.0+cu121-cp310-cp310-linux_x86_64.whl" in listing
    # the same requirements file the mirror publishes for hosts: one hash per file
    assert gpu_plan.texts["wheels/requirements.txt"] == requirements_text(lock, FAMILY, files)
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", gpu_plan.texts["wheels/requirements.txt"])
    assert sorted(hashes) == sorted(a.sha256 for a in files)
    # Miniforge for the conda env, under the name make-env.sh looks for
    installer = next(a for a in lock.installers() if a.name == "miniforge3")
    assert f"installer/{installer.filename}" in listing
    assert re.fullmatch(r"Miniforge3-.*\.sh", installer.filename)
    assert "Miniforge3-*.sh" in (CONTEXT_SOURCE / "make-env.sh").read_text()
    # the env's locked conda packages and their explicit spec: the build makes the env offline
    packages = lock.conda_packages()
    assert packages and {f"conda/{a.filename}" for a in packages} <= set(listing)
    explicit = gpu_plan.texts["conda/explicit.txt"].splitlines()
    assert explicit[explicit.index("@EXPLICIT") + 1:] == [f"file:///build/conda/{a.filename}" for a in packages]
    make_env = (CONTEXT_SOURCE / "make-env.sh").read_text()
    assert "--offline" in make_env and "/build/conda/explicit.txt" in make_env and "--channel" not in make_env
    # nothing is in this test's empty cache: the build would refuse and name every file
    assert len(gpu_plan.missing) == len(files) + 1 + len(packages)


def test_gpu_image_without_locked_conda_packages_is_refused(tmp_path):
    lock = gpu_lock_with_registered_wheel()
    lock = lock.model_copy(update={"artifacts": [a for a in lock.artifacts if a.kind != "conda"]})
    with pytest.raises(UserError, match=r"lock has no conda packages.*on a machine that reaches conda-forge"):
        plan_build(load_profile("cuda121"), lock, Cache(tmp_path), lock_digest="c" * 64, model="fm9g-4b")


def test_every_dockerfile_arg_is_given_and_every_given_arg_is_declared(gpu_plan):
    declared = dockerfile_args()
    assert set(gpu_plan.buildargs) <= set(declared), "build args the Dockerfile does not declare"
    without_default = {name for name, default in declared.items() if default is None}
    assert without_default <= set(gpu_plan.buildargs), "ARGs without a default that the build does not set"


def test_every_copied_source_is_in_the_context(gpu_plan):
    listing = set(gpu_plan.context_listing)
    for source in copied_sources():
        assert source in listing or source.rstrip("/") + "/" in listing, source


def test_no_secret_is_a_build_arg_or_context_file(gpu_plan):
    assert not [k for k in gpu_plan.buildargs if re.search(r"KEY|TOKEN|SECRET|PASSWORD", k)]
    assert not [n for n in gpu_plan.context_listing if "key" in n.lower() or "secret" in n.lower()]
    assert not re.search(r"^(ARG|ENV) .*API_KEY=", DOCKERFILE, re.M)


def test_gpu_image_without_the_operators_vllm_wheel_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"fm9g-deploy artifacts add FILE --family fm9g-4b-7b-70b"):
        plan_build(load_profile("cuda121"), load_lock("cuda121"), Cache(tmp_path), lock_digest="c" * 64,
                   model="fm9g-4b")


def test_upstream_gpu_image_renders_a_venv_of_the_whole_lock_on_the_base_it_is_given(tmp_path):
    profile, lock = load_profile("cuda130"), load_lock("cuda130")
    # No CUDA 13.0 base is pinned: the CUDA runtime images have no python3 for the venv.
    with pytest.raises(UserError, match=r"no CUDA base image is known for CUDA 13\.0 .*pass --base IMAGE"):
        plan_build(profile, lock, Cache(tmp_path), lock_digest="c" * 64)
    plan = plan_build(profile, lock, Cache(tmp_path), lock_digest="c" * 64, base="registry.example/cuda13-py312:1")
    assert plan.base == "registry.example/cuda13-py312:1" and not plan.base_is_local_rootfs
    args = plan.buildargs
    assert (args["ENV_MANAGER"], args["ENV_PYTHON"]) == ("venv", "3.12")
    assert args["ENV_PREFIX"] == "/opt/fm9g/envs/fm9g-vllm025"
    assert (args["ACCELERATOR"], args["INSTALL_SET"]) == ("cuda", "base")  # fm9g-4b by default, served by base
    assert args["SYSTEM_PACKAGES"] == "python3-venv g++ python3-dev"
    assert plan.tag == "fm9g-vllm:cuda130-cccccccccccc"
    files = lock.python_files("base")
    assert {f"wheels/{a.filename}" for a in files} <= set(plan.context_listing)
    assert "wheels/vllm-0.25.0-cp38-abi3-manylinux_2_28_x86_64.whl" in plan.context_listing
    assert "wheels/torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl" in plan.context_listing
    assert not [n for n in plan.context_listing if n.startswith("installer/") and n != "installer/"]
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", plan.texts["wheels/requirements.txt"])
    assert sorted(hashes) == sorted(a.sha256 for a in files)
    assert len(plan.missing) == len(files)


def test_cpu_image_uses_the_projects_debian_base_and_the_profiles_launch_args(tmp_path):
    plan = plan_build(load_profile("cpu"), load_lock("cpu"), Cache(tmp_path), lock_digest=lock_sha256("cpu"))
    assert plan.base.startswith("fm9g-sandbox-rootfs:") and plan.base_is_local_rootfs
    assert plan.buildargs["ENV_MANAGER"] == "venv" and plan.buildargs["ENV_PYTHON"] == "3.11"
    assert plan.buildargs["VLLM_ARGS"] == "--enforce-eager"
    assert plan.buildargs["SYSTEM_PACKAGES"] == "libnuma1 g++ python3-dev"
    assert plan.tag == f"fm9g-vllm:cpu-{lock_sha256('cpu')[:12]}"
    assert not [n for n in plan.context_listing if n.startswith("installer/") and n != "installer/"]


def test_bake_model_needs_the_tarball_and_names_it_in_the_tag(tmp_path):
    cache = Cache(tmp_path / "cache")
    plan = plan_build(load_profile("cpu"), load_lock("cpu"), cache, lock_digest="d" * 64, bake_model=True)
    assert "tiny-random tarball" in plan.missing
    tarball = tmp_path / "tiny-random.tar"
    tarball.write_bytes(b"not read here")
    digest = sha256_of(tarball)
    cache.store(tarball, digest, tarball.name)
    cache.save_pin("tiny-random", {"filename": tarball.name, "sha256": digest, "size": 13})
    plan = plan_build(load_profile("cpu"), load_lock("cpu"), cache, lock_digest="d" * 64, bake_model=True)
    assert plan.tag == f"fm9g-vllm:cpu-dddddddddddd-tiny-random-{digest[:8]}"
    assert plan.baked_model == {"name": "tiny-random", "filename": tarball.name, "sha256": digest}


@pytest.fixture
def small_cpu_plan(tmp_path):
    """The cpu profile with a two-wheel lock whose files are in a temporary cache."""
    wheels = tmp_path / "wheels"
    paths = [make_wheel(wheels, "fm9g-a", "1.0"), make_wheel(wheels, "fm9g-b", "2.0")]
    cache = Cache(tmp_path / "cache")
    artifacts = []
    for path, name in zip(paths, ("fm9g-a", "fm9g-b")):
        cache.store(path, sha256_of(path), path.name)
        artifacts.append(LockedArtifact(name=name, version=path.name.split("-")[2], filename=path.name,
                                        sha256=sha256_of(path), kind="wheel", sets=["base"],
                                        url=f"https://files.example/{path.name}"))
    lock = Lock(profile="cpu", generated_by="test", index_url="https://files.example/simple",
                target=LockTarget(python="3.11", abi="cp311", platforms=["manylinux_2_36_x86_64"], markers={}),
                requirements=["fm9g-a"], sets={"base": "base"}, artifacts=artifacts)
    return plan_build(load_profile("cpu"), lock, cache, lock_digest="e" * 64), cache


def test_context_is_the_same_bytes_every_time_so_rebuilds_hit_the_layer_cache(small_cpu_plan, tmp_path):
    plan, cache = small_cpu_plan
    first, second = tmp_path / "ctx1", tmp_path / "ctx2"
    for folder in (first, second):
        folder.mkdir()
        assemble_context(plan, folder)
    # what the docker SDK sends to the engine
    assert docker.utils.tar(str(first)).read() == docker.utils.tar(str(second)).read()
    wheel = next(n for n in plan.files if n.startswith("wheels/"))
    assert (first / wheel).stat().st_ino == plan.files[wheel].stat().st_ino, "wheels are hard links, not copies"
    assert (first / "wheels/requirements.txt").stat().st_mtime == FIXED_MTIME
    assert (first / "entrypoint.sh").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (first / "model").iterdir()) == []


def test_context_of_an_incomplete_cache_is_refused_with_the_fetch_to_run(tmp_path):
    plan = plan_build(load_profile("cpu"), load_lock("cpu"), Cache(tmp_path), lock_digest="f" * 64)
    with pytest.raises(UserError, match=r"artifacts fetch --profile cpu"):
        assemble_context(plan, tmp_path / "ctx")


def test_a_conda_lock_without_miniforge_is_refused_alike_by_the_image_build_and_the_lock(tmp_path):
    lock = gpu_lock_with_registered_wheel()
    lock = lock.model_copy(update={"artifacts": [a for a in lock.artifacts if a.kind != "installer"]})
    expected = r"^the cuda121 lock has no Miniforge installer; add one to the profile and run `fm9g-deploy artifacts lock"
    with pytest.raises(UserError, match=expected):
        lock.miniforge_installer()
    with pytest.raises(UserError, match=expected):
        plan_build(load_profile("cuda121"), lock, Cache(tmp_path), lock_digest="c" * 64, model="fm9g-4b")
