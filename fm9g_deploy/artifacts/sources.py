"""Local directories that may already hold a locked file: --from DIR, and pip's find-links dirs.

Some files cannot be downloaded from where the lock says (torch's CPU build lives on a host that
may be out of reach), but a machine often has them on disk already. A local file is used only
when its sha256 matches the lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fm9g_deploy.artifacts.cache import sha256_file


@lru_cache(maxsize=1)
def pip_find_links_dirs() -> tuple[Path, ...]:
    """The local directories pip is configured to find wheels in (`pip config list`, PIP_FIND_LINKS)."""
    try:
        listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                 text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    values = [line.split("=", 1)[1].strip().strip("'\"") for line in listing.splitlines()
              if line.split("=", 1)[0].endswith("find-links") and "=" in line]
    values.append(os.environ.get("PIP_FIND_LINKS", ""))
    found: list[Path] = []
    for value in values:
        for entry in value.split():
            path = _as_local_dir(entry)
            if path is not None and path not in found:
                found.append(path)
    return tuple(found)


def _as_local_dir(entry: str) -> Path | None:
    if entry.startswith("file://"):
        entry = unquote(urlsplit(entry).path)
    elif "://" in entry:
        return None
    path = Path(entry).expanduser()
    return path if path.is_dir() else None


def search_dirs(explicit: list[Path] | None, *, use_pip_config: bool = True) -> list[Path]:
    """--from directories first, then pip's find-links directories."""
    dirs = [Path(d).expanduser() for d in explicit or []]
    if use_pip_config:
        dirs += [d for d in pip_find_links_dirs() if d not in dirs]
    return dirs


def find_local(filename: str, sha256: str, dirs: list[Path]) -> Path | None:
    """A file called ``filename`` in one of ``dirs`` whose bytes hash to ``sha256``."""
    for folder in dirs:
        candidate = folder / filename
        if candidate.is_file() and sha256_file(candidate) == sha256:
            return candidate
    return None
