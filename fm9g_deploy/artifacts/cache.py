"""The artifact cache: a content-addressed store the mirror serves as-is.

    <root>/sha256/<hash>/<filename>   every file, under the sha256 of its bytes
    <root>/partial/<key>/<filename>   downloads in progress (resumed with HTTP Range)
    <root>/pins.json                  model tarballs pinned on first fetch (no published checksum)
    <root>/operator-wheels.json       the vLLM wheels the operator registered, per family
    <root>/published/<profile>/       the pip view of each profile (see publish.py)

A file only ever reaches sha256/ after its bytes hashed to that name, so two files with the same
name and different contents (the two families' vLLM wheels) sit side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fm9g_deploy.errors import UserError

CHUNK = 1024 * 1024


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Cache:
    root: Path

    # -- the content-addressed store --------------------------------------------------------

    def path_for(self, sha256: str, filename: str) -> Path:
        if "/" in filename or filename in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {filename!r}")
        return self.root / "sha256" / sha256 / filename

    def has(self, sha256: str, filename: str, size: int | None = None) -> bool:
        """Whether the file is stored (files are hashed before they are stored; `verify` re-hashes)."""
        path = self.path_for(sha256, filename)
        try:
            return path.is_file() and (size is None or path.stat().st_size == size)
        except OSError:
            return False

    def store(self, source: Path, sha256: str, filename: str, *, move: bool = False) -> Path:
        """Put ``source`` (whose bytes hash to ``sha256``: the caller checked) under its hash, atomically."""
        target = self.path_for(sha256, filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        if move:
            os.replace(source, target)
        else:
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            os.close(handle)
            try:
                shutil.copyfile(source, temporary)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        target.chmod(0o644)
        return target

    def stored_files(self) -> Iterator[tuple[str, Path]]:
        """(expected sha256, path) of every stored file."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for folder in sorted(base.iterdir()):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.is_file() and not path.name.startswith(".incoming-"):
                        yield folder.name, path

    def partial_dir(self, key: str) -> Path:
        return self.root / "partial" / key

    # -- small JSON registries ----------------------------------------------------------------

    def _read_json(self, name: str) -> dict:
        path = self.root / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; fix or remove the file") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a JSON object; fix or remove the file")
        return data

    def _write_json(self, name: str, data: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        temporary.replace(path)

    def pins(self) -> dict[str, dict]:
        """model name -> {filename, sha256, size, source, pinned_at} (trust on first use)."""
        return self._read_json("pins.json").get("models", {})

    def save_pin(self, model: str, pin: dict) -> None:
        data = self._read_json("pins.json")
        data.setdefault("models", {})[model] = pin
        self._write_json("pins.json", data)

    def operator_wheels(self) -> dict[str, dict]:
        """vLLM wheel family -> {filename, sha256, size, name, version, added_at}."""
        return self._read_json("operator-wheels.json").get("families", {})

    def save_operator_wheel(self, family: str, record: dict) -> None:
        data = self._read_json("operator-wheels.json")
        data.setdefault("families", {})[family] = record
        self._write_json("operator-wheels.json", data)


def resolve_cache_dir(explicit: Path | None, config_path: Path | None) -> Path:
    """--cache-dir, else the config's mirror.cache_dir (fm9g.yml here or --config), else the user cache."""
    if explicit:
        return explicit
    from fm9g_deploy.config import load_config
    from fm9g_deploy.paths import CONFIG_FILENAME, cache_dir

    path = config_path or (Path(CONFIG_FILENAME) if Path(CONFIG_FILENAME).is_file() else None)
    if path is not None:
        configured = load_config(path).mirror.cache_dir
        if configured:
            return configured.expanduser()
    return cache_dir()
