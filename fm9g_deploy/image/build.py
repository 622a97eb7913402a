"""Assemble a build context from the cache and build it with the Docker SDK, offline.

Warm rebuilds hit the layer cache: the context is the same bytes under the same names and modes
each time (wheels are hard links to the cache's files; generated files get a fixed mtime), and
the classic builder keys COPY layers on file contents, not on when the context was made.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.image.render import CONTEXT_SOURCE, ROLE_FILES, SERVE_ROLE_FILES, SOURCE_FILES, BuildPlan

#: mtime given to every generated or copied context file (1980-01-01, as zip and wheels do).
FIXED_MTIME = 315532800


@dataclass
class BuildResult:
    image_id: str
    size_bytes: int
    seconds: float
    steps: int
    cached_steps: int
    log_path: Path


def require_complete(plan: BuildPlan) -> None:
    """UserError naming the fetch to run when the cache lacks a file of the image."""
    if plan.missing:
        raise UserError(f"{len(plan.missing)} file(s) of the {plan.profile} image are not in the artifact cache "
                        f"(first: {plan.missing[0]}); run `fm9g-deploy artifacts fetch --profile {plan.profile}`")


def assemble_context(plan: BuildPlan, folder: Path) -> None:
    """Write the build context of ``plan`` into the empty directory ``folder``."""
    require_complete(plan)
    for sub in ("wheels", "installer", "conda", "model"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, source in plan.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.parent in (CONTEXT_SOURCE, SERVE_ROLE_FILES):
            shutil.copyfile(source, target)
            target.chmod({**SOURCE_FILES, **ROLE_FILES}[name])
            os.utime(target, (FIXED_MTIME, FIXED_MTIME))
        else:
            _link_or_copy(source, target)
    for name, text in plan.texts.items():
        target = folder / name
        target.write_text(text, encoding="utf-8")
        target.chmod(0o644)
        os.utime(target, (FIXED_MTIME, FIXED_MTIME))
    if plan.model_tarball is not None:
        _unpack_model(plan.model_tarball, folder / "model")
        map_for_profile(folder / "model", plan.profile, plan.baked_model["name"])
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link keeps the context free to make (no copy of 900 MB of wheels) and byte-stable."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def unpack_model(tarball: Path, destination: Path) -> Path:
    """Unpack a model tarball safely; return the directory that holds config.json."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(destination, filter="data")
    configs = sorted(destination.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise OperationFailed(f"{tarball.name} holds no config.json; it is not a model directory")
    return configs[0].parent


def map_for_profile(model_dir: Path, profile: str, model: str) -> None:
    """The architecture mapping provision applies on hosts (fm9g_deploy/architecture.py)."""
    from fm9g_deploy.architecture import map_model_dir
    from fm9g_deploy.catalog import get_model
    from fm9g_deploy.hostvars import model_serve_as
    from fm9g_deploy.profiles import load_profile

    map_model_dir(str(model_dir), model_serve_as(model, load_profile(profile)), get_model(model).expected_shape())


def _unpack_model(tarball: Path, model_folder: Path) -> None:
    """Bake the model: the files of its config.json directory straight under model/."""
    with tempfile.TemporaryDirectory(dir=model_folder.parent) as scratch:
        found = unpack_model(tarball, Path(scratch))
        for path in sorted(found.iterdir()):
            shutil.move(str(path), model_folder / path.name)
    for path in model_folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def build(client, plan: BuildPlan, context: Path, console, log_path: Path, *, nocache: bool = False) -> BuildResult:
    """Build ``context`` as ``plan.tag`` with no network; show steps as they run; log everything."""
    import docker.errors

    started = time.monotonic()
    steps = cached = 0
    current = ""
    image_id = None
    error = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"sending build context: {plan.context_bytes() / 1e6:.0f} MB ({len(plan.files)} files)")
    with open(log_path, "w", encoding="utf-8") as log, console.status(f"building {plan.tag}") as status:
        try:
            stream = client.api.build(
                path=str(context), tag=plan.tag, buildargs=plan.buildargs,
                rm=True, forcerm=True, pull=False, nocache=nocache, network_mode="none", decode=True,
            )
            for chunk in stream:
                if "stream" in chunk:
                    text = chunk["stream"]
                    log.write(text)
                    for line in text.splitlines():
                        line = line.strip()
                        if line.startswith("Step "):
                            steps += 1
                            current = line
                            console.print(f"  {' '.join(line.split())[:110]}", soft_wrap=True, markup=False)
                        elif line == "---> Using cache":
                            cached += 1
                        elif line:
                            status.update(f"{current[:60]}  {int(time.monotonic() - started)}s  {line[:60]}")
                elif "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                elif "error" in chunk:
                    error = chunk["error"].strip()
                    log.write(f"ERROR: {error}\n")
        except docker.errors.APIError as exc:
            error = str(exc.explanation or exc)
    if error or image_id is None:
        raise OperationFailed(f"building {plan.tag} failed: {(error or 'no image produced')[:400]}; "
                              f"full log: {log_path}")
    image = client.images.get(plan.tag)
    return BuildResult(image_id=image.id, size_bytes=int(image.attrs.get("Size") or 0),
                       seconds=time.monotonic() - started, steps=steps, cached_steps=cached, log_path=log_path)


def ensure_base(client, plan: BuildPlan, console) -> None:
    """The base image must be in the engine: the project's rootfs is made here, others loaded by hand."""
    from docker.errors import ImageNotFound

    if plan.base_is_local_rootfs:
        from fm9g_deploy.sandbox.image import ensure_rootfs_image

        made = ensure_rootfs_image(client, console)
        if made != plan.base:
            raise OperationFailed(f"the Debian base is {made}, the plan expected {plan.base}")
        return
    try:
        client.images.get(plan.base)
    except ImageNotFound:
        raise UserError(f"the base image {plan.base} is not in the local Docker engine and the build does not "
                        f"download; `docker pull` it where a registry is reachable (or `docker load` it), "
                        f"or pass --base IMAGE") from None
