"""The manifest of a built image: what it is made of, its id and size, and whether it passed its
smoke test. Push and save read it: only the very image that passed leaves this machine."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fm9g_deploy.errors import UserError
from fm9g_deploy.paths import state_dir


def manifests_dir() -> Path:
    return state_dir() / "images"


def manifest_path(tag: str) -> Path:
    return manifests_dir() / (re.sub(r"[^A-Za-z0-9._-]", "_", tag) + ".json")


def write_manifest(data: dict) -> Path:
    path = manifest_path(data["image"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def read_manifest(tag: str) -> dict | None:
    path = manifest_path(tag)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; rebuild with `fm9g-deploy image build`") from None


def tested_image(client, tag: str, build_command: str) -> tuple[dict, object]:
    """(manifest, image) of ``tag`` when it passed its smoke test and was not rebuilt since; else UserError."""
    from docker.errors import ImageNotFound

    rebuild = f"run `{build_command}`"
    manifest = read_manifest(tag)
    if manifest is None:
        raise UserError(f"{tag} has no build manifest (it was not built by fm9g-deploy here); {rebuild}")
    smoke = manifest.get("smoke_test") or {}
    if not smoke.get("passed"):
        why = smoke.get("problem") or "it was not smoke-tested"
        raise UserError(f"{tag} did not pass its smoke test ({why}); only tested images leave this machine; {rebuild}")
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        raise UserError(f"{tag} is not in the local Docker engine; {rebuild}") from None
    if image.id != manifest.get("image_id"):
        raise UserError(f"{tag} is now image {image.id[:19]}, not the {manifest.get('image_id', '?')[:19]} that "
                        f"passed its smoke test; {rebuild}")
    return manifest, image
