"""What an image build is made of, decided without Docker: base, build args, tag, context files.

The context is the profile's install set, file for file from the lock (the wheels under their
cache paths), the same requirements.txt the mirror publishes, the Miniforge installer for a conda
profile, and images/vllm. Rendering needs no engine and no cached file, so it can be checked for
a stack that cannot be built here (the guide's CUDA image).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy import layout
from fm9g_deploy.errors import UserError
from fm9g_deploy.paths import IMAGES_DIR, ROLES_DIR

REPOSITORY = "fm9g-vllm"
CONTEXT_SOURCE = IMAGES_DIR / "vllm"
#: images/vllm files copied into every context, and their modes.
SOURCE_FILES = {"Dockerfile": 0o644, "make-env.sh": 0o755, "entrypoint.sh": 0o755}
#: Host-side programs of the serving role the image carries too (one copy of each in the project).
SERVE_ROLE_FILES = ROLES_DIR / "fm9g_replica" / "files"
ROLE_FILES = {"fm9g_replica_supervisor.py": 0o755, "fm9g_engine_probe.py": 0o755, "fm9g_replica_nodes.py": 0o755,
              "fm9g_vllm_worker.py": 0o755}
#: The CUDA runtime base per profile CUDA version. The digest is the one the registry reported
#: for this tag on a public `docker pull` log; it could not be re-checked here (no registry).
CUDA_BASES = {
    "12.1": "nvidia/cuda:12.1.1-runtime-ubuntu22.04"
            "@sha256:8bbc6e304b193e84327fa30d93eea70ec0213b808239a46602a919a479a73b12",
}
#: A conda profile's locked packages and their explicit spec, in the context and inside the build.
CONDA_EXPLICIT = "conda/explicit.txt"
CONDA_BUILD_DIR = "/build/conda"
#: uid of the non-root user the server runs as (a mounted key file must be readable by it).
SERVE_UID = 10001
#: Where the model is mounted (read-only) or baked inside the image.
MODEL_MOUNT = "/model"


@dataclass(frozen=True)
class BuildPlan:
    profile: str
    accelerator: str
    set_name: str
    lock_sha256: str
    base: str
    #: True when the base is the project's own Debian rootfs (made here, never pulled).
    base_is_local_rootfs: bool
    tag: str
    buildargs: dict[str, str]
    #: path inside the context -> the file it is (cache files, images/vllm files).
    files: dict[str, Path]
    #: generated context files: path inside the context -> text.
    texts: dict[str, str]
    #: the model baked into the image ({name, filename, sha256}), or None (mounted at run time).
    baked_model: dict | None = None
    model_tarball: Path | None = None
    #: context files the artifact cache does not hold (fetch them first).
    missing: list[str] = field(default_factory=list)
    cache_root: Path | None = None

    @property
    def repository(self) -> str:
        return self.tag.split(":", 1)[0]

    @property
    def context_listing(self) -> list[str]:
        names = set(self.files) | set(self.texts) | {"wheels/", "installer/", "conda/", "model/"}
        return sorted(names)

    def context_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files.values() if path.exists())


def lock_sha256(profile: str) -> str:
    from fm9g_deploy.artifacts.lock import lock_path

    path = lock_path(profile)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise UserError(f"lock {path} not found; create it with `fm9g-deploy artifacts lock --profile {profile}`") from None


def default_model(profile) -> str:
    """The model an image is smoke-tested with (and baked) unless --model says otherwise."""
    return "tiny-random" if profile.accelerator == "cpu" else "fm9g-4b"


def base_image(profile, override: str | None = None) -> tuple[str, bool]:
    """(base image, whether it is the project's own rootfs) for a profile."""
    if override:
        return override, False
    if profile.accelerator == "cpu":
        from fm9g_deploy.sandbox.image import ROOTFS_REPOSITORY, image_digest

        return f"{ROOTFS_REPOSITORY}:{image_digest()}", True
    base = CUDA_BASES.get(profile.cuda_version or "")
    if base is None:
        raise UserError(f"no CUDA base image is known for CUDA {profile.cuda_version} (profile {profile.name}); "
                        f"pass --base IMAGE")
    return base, False


def image_tag(profile: str, set_name: str, lock_digest: str, baked_model: dict | None = None) -> str:
    """fm9g-vllm:<profile>[-<set>]-<lock hash>[-<model>-<tarball hash>]."""
    suffix = "" if set_name == "base" else f"-{set_name}"
    tag = f"{REPOSITORY}:{profile}{suffix}-{lock_digest[:12]}"
    if baked_model:
        tag += f"-{baked_model['name']}-{baked_model['sha256'][:8]}"
    return tag


def plan_build(profile, lock, cache, *, lock_digest: str, model: str | None = None, bake_model: bool = False,
               base: str | None = None) -> BuildPlan:
    """Everything `docker build` gets for ``profile`` (no Docker, no file read but the cache's listing)."""
    from fm9g_deploy.artifacts.conda import explicit_spec, locked_packages
    from fm9g_deploy.artifacts.publish import requirements_text

    model = model or default_model(profile)
    set_name = lock.set_for_model(model)
    python_files = lock.python_files(set_name)
    base_name, local_rootfs = base_image(profile, base)
    files: dict[str, Path] = {name: CONTEXT_SOURCE / name for name in SOURCE_FILES}
    files.update({name: SERVE_ROLE_FILES / name for name in ROLE_FILES})
    missing: list[str] = []
    for artifact in python_files:
        files[f"wheels/{artifact.filename}"] = cache.path_for(artifact.sha256, artifact.filename)
        if not cache.has(artifact.sha256, artifact.filename):
            missing.append(artifact.filename)
    if profile.env.manager == "conda":
        installer = lock.miniforge_installer()
        files[f"installer/{installer.filename}"] = cache.path_for(installer.sha256, installer.filename)
        if not cache.has(installer.sha256, installer.filename):
            missing.append(installer.filename)
    texts = {"wheels/requirements.txt": requirements_text(lock, set_name, python_files)}
    if profile.env.manager == "conda":
        # The env from the locked conda packages and their explicit spec, as hosts make it: offline.
        packages = locked_packages(profile, lock)
        for package in packages:
            files[f"conda/{package.filename}"] = cache.path_for(package.sha256, package.filename)
            if not cache.has(package.sha256, package.filename):
                missing.append(package.filename)
        texts[CONDA_EXPLICIT] = explicit_spec(packages, CONDA_BUILD_DIR)

    baked, tarball = None, None
    if bake_model:
        pin = cache.pins().get(model)
        if not pin or not cache.has(pin["sha256"], pin["filename"]):
            missing.append(f"{model} tarball")
        else:
            baked = {"name": model, "filename": pin["filename"], "sha256": pin["sha256"]}
            tarball = cache.path_for(pin["sha256"], pin["filename"])

    tag = image_tag(profile.name, set_name, lock_digest, baked)
    buildargs = {
        "BASE": base_name,
        "PROFILE": profile.name,
        "LOCK_SHA256": lock_digest,
        "INSTALL_SET": set_name,
        "ACCELERATOR": profile.accelerator,
        "ENV_MANAGER": profile.env.manager,
        "ENV_PREFIX": layout.env_prefix(profile.env.name),
        "ENV_PYTHON": profile.env.python,
        "CONDA_ROOT": layout.CONDA_ROOT,
        "SYSTEM_PACKAGES": " ".join(profile.system_packages),
        "VLLM_ARGS": " ".join(profile.vllm_args),
        "SERVE_UID": str(SERVE_UID),
    }
    return BuildPlan(
        profile=profile.name, accelerator=profile.accelerator, set_name=set_name, lock_sha256=lock_digest,
        base=base_name, base_is_local_rootfs=local_rootfs, tag=tag, buildargs=buildargs,
        files=dict(sorted(files.items())), texts=texts, baked_model=baked, model_tarball=tarball,
        missing=missing, cache_root=cache.root,
    )


def plan_for_profile(profile_name: str, *, cache_dir: Path | None = None, model: str | None = None,
                     bake_model: bool = False, base: str | None = None) -> BuildPlan:
    """plan_build for a named profile, its committed lock and the local artifact cache."""
    from fm9g_deploy.artifacts.cache import Cache, resolve_cache_dir
    from fm9g_deploy.artifacts.lock import load_lock
    from fm9g_deploy.profiles import load_profile

    profile = load_profile(profile_name)
    lock = load_lock(profile_name)
    cache = Cache(resolve_cache_dir(cache_dir, None))
    return plan_build(profile, lock, cache, lock_digest=lock_sha256(profile_name), model=model,
                      bake_model=bake_model, base=base)
