"""The pip view of each profile, inside the cache, for hosts that install offline from the mirror.

    published/<profile>/requirements.txt   `name==version --hash=sha256:...`, one line per file
    published/<profile>/index.html         links to the content-addressed files (find-links page)
    published/<profile>/<family>/...       the same for each operator vLLM wheel family
    published/<profile>/lock.json          the lock itself (installers, sizes, sets)

Every link is relative (../../sha256/<hash>/<file>#sha256=<hash>), so the view works under any
base URL the mirror is served at. A host installs one set with:

    pip install --no-index --no-deps --require-hashes --find-links URL/ -r URL/requirements.txt

--no-deps because the lock is complete and leaves out packages on purpose (the cpu profile's
torchvision); --require-hashes is implied by the hashes, but saying it makes a bad file fatal.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.lock import BASE_SET, Lock, LockedArtifact, lock_text

INSTALL_COMMAND = "pip install --no-index --no-deps --require-hashes --find-links URL/ -r URL/requirements.txt"


def set_folder(cache: Cache, profile: str, set_name: str) -> Path:
    base = cache.root / "published" / profile
    return base if set_name == BASE_SET else base / set_name


def set_url(mirror_url: str, profile: str, set_name: str) -> str:
    """The mirror URL of an install set's view (ends in '/': pip's --find-links, + requirements.txt)."""
    tail = f"published/{quote(profile)}/" + ("" if set_name == BASE_SET else f"{quote(set_name)}/")
    return mirror_url.rstrip("/") + "/" + tail


def file_url(mirror_url: str, sha256: str, filename: str) -> str:
    """The mirror URL of one stored file (installers, model tarballs: see the lock and pins.json)."""
    return f"{mirror_url.rstrip('/')}/sha256/{sha256}/{quote(filename)}"


def requirements_text(lock: Lock, set_name: str, files: list[LockedArtifact]) -> str:
    lines = [
        f"# fm9g-deploy: profile {lock.profile}, install set {set_name} ({len(files)} files,",
        f"# Python {lock.target.python}). Install offline, with URL = the directory of this file:",
        f"#   {INSTALL_COMMAND}",
    ]
    lines += [f"{artifact.name}=={artifact.version} --hash=sha256:{artifact.sha256}" for artifact in files]
    return "\n".join(lines) + "\n"


def index_html(lock: Lock, set_name: str, files: list[LockedArtifact], folder: Path, cache: Cache) -> str:
    title = html.escape(f"fm9g-deploy {lock.profile} / {set_name}")
    links = []
    for artifact in files:
        target = cache.path_for(artifact.sha256, artifact.filename)
        relative = os.path.relpath(target.parent, folder).replace(os.sep, "/")
        href = f"{quote(relative)}/{quote(artifact.filename)}#sha256={artifact.sha256}"
        links.append(f'    <a href="{html.escape(href)}">{html.escape(artifact.filename)}</a><br>')
    return "\n".join([
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="1.0">',
        f"    <title>{title}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>{title}</h1>",
        *links,
        "  </body>",
        "</html>",
    ]) + "\n"


def publish(lock: Lock, cache: Cache) -> tuple[list[Path], list[str]]:
    """Write the view of every install set whose files are all in the cache.

    Returns (folders written, sets skipped because a file is missing).
    """
    written: list[Path] = []
    skipped: list[str] = []
    root = cache.root / "published" / lock.profile
    if root.is_dir():  # views of sets the lock no longer has
        for child in root.iterdir():
            if child.is_dir() and child.name not in lock.sets:
                _unpublish(child)
    for set_name in lock.sets:
        files = lock.python_files(set_name)
        if not all(cache.has(a.sha256, a.filename) for a in files):
            skipped.append(set_name)
            _unpublish(set_folder(cache, lock.profile, set_name))  # never leave a view of an older lock
            continue
        folder = set_folder(cache, lock.profile, set_name)
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "requirements.txt", requirements_text(lock, set_name, files))
        _write(folder / "index.html", index_html(lock, set_name, files, folder, cache))
        written.append(folder)
    if written:
        _write(root / "lock.json", lock_text(lock))
    return written, skipped


def _unpublish(folder: Path) -> None:
    for name in ("requirements.txt", "index.html"):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()  # only when nothing else is in it
    except OSError:
        pass


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    temporary.replace(path)
