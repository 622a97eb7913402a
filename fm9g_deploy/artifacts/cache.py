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
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fm9g_deploy.errors import UserError

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: What to do when a registry file is damaged, per file: each names the command that rebuilds it.
_REGISTRY_FIX = {
    "pins.json": "remove the file (or the model's entry) and fetch the model again with "
                 "`fm9g-deploy artifacts fetch --profile PROFILE --model MODEL`",
    "operator-wheels.json": "remove the file and register the wheels again with "
                            "`fm9g-deploy artifacts add FILE --family FAMILY`",
}
#: The top-level key of each registry file.
_REGISTRY_KEY = {"pins.json": "models", "operator-wheels.json": "families"}


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

    # -- the root itself ------------------------------------------------------------------------

    def require_directory(self) -> None:
        """UserError when the root (or a folder above it) is a file: every path under it would fail."""
        for path in (self.root, *self.root.parents):
            if path.is_dir():
                return
            if path.exists() or path.is_symlink():
                what = "a file" if path.is_file() else "not a directory"
                where = f"is {what}" if path == self.root else f"is inside {path}, which is {what}"
                raise UserError(f"the cache dir {self.root} {where}; pass a directory with --cache-dir "
                                "(or as mirror.cache_dir in the config)")

    def require_existing(self) -> None:
        """UserError unless the cache dir exists: reading a missing cache must not pass for 'all fine'."""
        self.require_directory()
        if not self.root.is_dir():
            raise UserError(f"the cache dir {self.root} does not exist; pass the cache with --cache-dir, "
                            "or fill it with `fm9g-deploy artifacts fetch --profile PROFILE`")

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
        self.require_directory()
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
        """The registry file ``name`` (``{}`` when absent); UserError naming the file and its fix if damaged."""
        path = self.root / name
        fix = _REGISTRY_FIX[name]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text (damaged); {fix}") from None
        except (OSError, ValueError) as exc:
            if isinstance(exc, NotADirectoryError):
                self.require_directory()  # the usual cause: the cache dir is a file; say that instead
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise UserError(f"cannot read {path}: {reason}; {fix}") from None
        key = _REGISTRY_KEY[name]
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a JSON object (its top level is {json_kind(data)}); {fix}")
        if not isinstance(data.get(key, {}), dict):
            raise UserError(f"{path}: its {key!r} is {json_kind(data[key])}, not an object; {fix}")
        for entry, record in data.get(key, {}).items():
            problem = _record_problem(record)
            if problem:
                raise UserError(f"{path}: the entry {entry!r} {problem}; {fix}")
        return data

    def _write_json(self, name: str, data: dict) -> None:
        self.require_directory()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        temporary = path.with_name(f".{name}.tmp")
        try:
            temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)  # the registry stays as it was, with nothing beside it
            raise

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


def json_kind(data: object) -> str:
    """What a JSON value is, for messages: 'a list', 'a string', 'null'..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(data), "a number")


def _record_problem(record: object) -> str | None:
    """Why a pin or a wheel registration cannot be used (the fields other code reads), or None."""
    if not isinstance(record, dict):
        return f"is {json_kind(record)}, not an object"
    filename, sha256, size = record.get("filename"), record.get("sha256"), record.get("size")
    if not isinstance(filename, str) or filename in ("", ".", "..") or "/" in filename or "\\" in filename:
        return "has no plain filename"
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        return "has no sha256 of 64 hex digits"
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return "has a size that is not a whole number of bytes"
    return None


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
