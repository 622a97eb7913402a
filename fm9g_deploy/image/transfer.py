"""Ship a tested image: push it to a registry, or save it as a tarball for `docker load` on an
air-gapped host."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from fm9g_deploy.errors import OperationFailed, UserError

_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")


def registry_reference(registry: str, tag: str) -> tuple[str, str]:
    """(repository, tag) of ``tag`` under ``registry`` (host[:port][/namespace]; a scheme is dropped)."""
    cleaned = re.sub(r"^[a-z]+://", "", registry.strip()).rstrip("/")
    if not _REGISTRY.match(cleaned):
        raise UserError(f"--registry {registry!r} is not a registry address; use HOST[:PORT][/NAMESPACE], "
                        f"e.g. registry.example.com:5000/fm9g")
    repository, version = tag.split(":", 1)
    return f"{cleaned}/{repository}", version


def push(client, image, tag: str, registry: str, console) -> str:
    """Tag ``image`` under ``registry`` and push it; return the pushed reference."""
    repository, version = registry_reference(registry, tag)
    reference = f"{repository}:{version}"
    image.tag(repository, tag=version)
    layers: dict[str, str] = {}
    try:
        with console.status(f"pushing {reference}") as status:
            for chunk in client.images.push(repository, tag=version, stream=True, decode=True):
                if "error" in chunk:
                    raise OperationFailed(f"pushing {reference} failed: {chunk['error'].strip()[:300]}")
                if "id" in chunk and "status" in chunk:
                    layers[chunk["id"]] = chunk["status"]
                    done = sum(1 for s in layers.values() if s in ("Pushed", "Layer already exists"))
                    status.update(f"pushing {reference}: {done}/{len(layers)} layers")
    except BaseException:
        client.images.remove(reference)  # only the registry tag; the image stays
        raise
    return reference


def save(image, tag: str, output: Path, manifest: dict, console) -> tuple[Path, str, int]:
    """Write ``image`` (with its tag) to ``output``; return (path, sha256, bytes). A manifest with the
    tarball's sha256 is written beside it."""
    output = output.resolve()
    if output.is_dir():
        output = output / (tag.replace(":", "_").replace("/", "_") + ".tar")
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.partial")
    digest = hashlib.sha256()
    written = 0
    started = time.monotonic()
    try:
        with open(temporary, "wb") as handle, console.status(f"saving {tag}") as status:
            for chunk in image.save(named=tag):
                handle.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                status.update(f"saving {tag}: {written / 1e6:.0f} MB, {int(time.monotonic() - started)}s")
        temporary.replace(output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sha256 = digest.hexdigest()
    beside = output.with_name(output.name + ".json")
    beside.write_text(json.dumps({**manifest, "tarball": output.name, "tarball_sha256": sha256,
                                  "tarball_bytes": written}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return output, sha256, written
