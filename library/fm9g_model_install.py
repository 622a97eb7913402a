#!/usr/bin/python
"""Ansible module: unpack a verified model tarball into a release directory and switch to it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fm9g_model_install
short_description: Unpack a model tarball safely and switch the C(current) link to it
description:
  - Re-checks the tarball's sha256, unpacks it into C(<models_root>/releases/<sha256>/) through a
    staging directory, finds the directory that holds C(config.json) and the weights
    (C(*.safetensors) or C(pytorch_model*.bin)), and points C(<models_root>/current) at it with an
    atomic rename. A corrupt or unsafe tarball fails and leaves C(current) as it was.
  - Refuses entries that would land outside the release (absolute paths, C(..), symlinks or hard
    links pointing outside, also through other symlinks), paths through a symlink, hard links to
    anything but an earlier file, device files, fifos, names with control characters (NUL,
    newline), and names that appear twice. Ownership in the archive is ignored; files become 0644
    (0755 if executable), directories 0755.
  - Reads the archive to its end-of-archive marker before writing anything, so a tarball cut short
    (or with a damaged header) is refused even when the entries before the cut are complete.
  - Idempotent - when C(current) already is this sha256 nothing is read or written. Switching back
    to a release still on disk (a rollback) needs no tarball.
  - Keeps the newest C(keep_releases) releases (by when they were last made current) and removes
    older ones; the current one and the one before it are always kept.
  - Supports check mode - reports what would change and touches nothing. When the tarball is
    present it is verified with the same reading and checks as a real run, so both refuse the same
    tarballs.
options:
  src:
    description: Path of the downloaded tarball on the host (.tar, or .tar.gz/.tar.xz/.tar.bz2).
      Needed only when the release is not on disk yet.
    type: path
  sha256:
    description: Expected sha256 of the tarball (64 hex digits); names the release directory.
    type: str
    required: true
  models_root:
    description: Directory of this model's releases, e.g. C(/opt/fm9g/models/fm9g-4b).
    type: path
    required: true
  keep_releases:
    description: How many releases to keep, the current one included (at least 2).
    type: int
    default: 2
author: fm9g-deploy
"""

EXAMPLES = r"""
- name: Install the model release
  fm9g_model_install:
    src: /var/cache/fm9g/9G4B.tar
    sha256: "{{ fm9g_model_sha256 }}"
    models_root: /opt/fm9g/models/fm9g-4b
  register: fm9g_model_release

- name: Serve from the stable path
  ansible.builtin.debug:
    msg: "vLLM --model {{ fm9g_model_release.current }} (now {{ fm9g_model_release.model_dir }})"
"""

RETURN = r"""
sha256:
  description: sha256 of the release now current (or that would be, in check mode).
  returned: always
  type: str
action:
  description: C(none) (already current), C(switch) (release was on disk) or C(install) (unpacked).
  returned: always
  type: str
current:
  description: Path of the C(current) symlink; serve the model from here.
  returned: always
  type: str
model_dir:
  description: Resolved directory holding config.json and the weights; null in check mode when
    the release is not on disk and the tarball is not there to read.
  returned: always
  type: str
release_dir:
  description: The release directory C(<models_root>/releases/<sha256>).
  returned: always
  type: str
previous_sha256:
  description: sha256 that C(current) pointed at before this run, or null.
  returned: always
  type: str
pruned:
  description: sha256 of the releases removed (or that would be removed, in check mode).
  returned: always
  type: list
  elements: str
checksum_verified:
  description: Whether the tarball's sha256 was computed and matched in this run.
  returned: always
  type: bool
"""

import collections
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zlib

from ansible.module_utils.basic import AnsibleModule

RELEASES_DIR = "releases"
CURRENT_LINK = "current"
#: Written into a release once it is complete: the release is usable only when this is present.
MARKER_FILE = ".fm9g-release.json"
STAGING_PREFIX = ".staging-"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MIN_KEEP_RELEASES = 2
#: Free space to leave beside the unpacked model (bytes).
SPACE_MARGIN = 64 * 1024 * 1024
_HASH_CHUNK = 4 * 1024 * 1024

try:
    import lzma

    _LZMA_ERRORS = (lzma.LZMAError,)
except ImportError:  # Python built without lzma: .tar.xz cannot be opened anyway
    _LZMA_ERRORS = ()
#: What reading a damaged archive raises, besides tarfile's own errors.
_TAR_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error) + _LZMA_ERRORS


class InstallError(Exception):
    """A problem that stops the install; ``current`` is left as it was."""


# ---------------------------------------------------------------------------------------------
# Checksums


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str, expected: str) -> None:
    if not os.path.isfile(path):
        raise InstallError("tarball %s not found; download it first (the current model is unchanged)" % path)
    actual = sha256_of(path)
    if actual != expected:
        raise InstallError(
            "sha256 mismatch for %s: expected %s, got %s; the download is corrupt or the wrong file "
            "(the current model is unchanged)" % (path, expected, actual)
        )


# ---------------------------------------------------------------------------------------------
# Reading and checking the archive (no disk writes). Check mode and the real run both call
# scan_tarball, so the two give the same verdict on every tarball.

#: tar ends with two zero blocks. tarfile stops quietly at the end of the file, at a zero block or
#: at an unreadable header, so without this check a cut-short archive reads as a complete one.
END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)
#: Symlinks followed while resolving one path before it counts as a loop (the kernel's limit).
MAX_SYMLINK_HOPS = 40
#: NUL, newline and other control characters: no model file needs them, and they garble messages and logs.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
#: What reading a compressed stream to its end raises when its trailer is missing or wrong.
_STREAM_END_ERRORS = (EOFError, OSError, zlib.error) + _LZMA_ERRORS

#: What scan_tarball found: the members, their normalized paths, the bytes the files take on
#: disk (hard links are copied) and the directory holding config.json and the weights.
TarScan = collections.namedtuple("TarScan", "members paths needed model_subdir")


def _corrupt(src: str, why) -> InstallError:
    return InstallError("tarball %s is corrupt or truncated (%s); the current model is unchanged" % (src, why))


def member_path(member: tarfile.TarInfo) -> str:
    """The member's normalized relative path; InstallError if its name is unsafe."""
    name = member.name
    if _CONTROL_CHARACTERS.search(name) or _CONTROL_CHARACTERS.search(member.linkname or ""):
        raise InstallError("unsafe tar entry %r: control character (NUL, newline, ...) in its name or link" % name)
    if not name:
        raise InstallError("unsafe tar entry %r: empty name" % name)
    if name.startswith("/"):
        raise InstallError("unsafe tar entry %r: absolute path" % name)
    if ".." in name.split("/"):
        raise InstallError("unsafe tar entry %r: '..' in the path" % name)
    normalized = os.path.normpath(name)
    if not _inside(normalized):
        raise InstallError("unsafe tar entry %r: escapes the target directory" % name)
    if normalized.split("/")[0].startswith(MARKER_FILE):
        # The module writes the release marker itself; one from the archive could fake a release.
        raise InstallError("unsafe tar entry %r: %s is reserved for the release marker" % (name, MARKER_FILE))
    return normalized


def _inside(relative: str) -> bool:
    return relative != ".." and not relative.startswith("../") and not os.path.isabs(relative)


def check_member(member: tarfile.TarInfo) -> str:
    """Validate one member's name and type on its own; return its normalized path."""
    path = member_path(member)
    if member.isdev():
        kind = "fifo" if member.isfifo() else "device file"
        raise InstallError("unsafe tar entry %r: %s" % (member.name, kind))
    if member.issym():
        if not member.linkname:
            raise InstallError("unsafe tar entry %r: symlink with an empty target" % member.name)
        if os.path.isabs(member.linkname):
            raise InstallError("unsafe tar entry %r: symlink to absolute path %r" % (member.name, member.linkname))
        target = os.path.normpath(os.path.join(os.path.dirname(path), member.linkname))
        if not _inside(target):
            raise InstallError("unsafe tar entry %r: symlink %r points outside" % (member.name, member.linkname))
    elif member.islnk():
        target = os.path.normpath(member.linkname)
        if os.path.isabs(member.linkname) or not _inside(target):
            raise InstallError("unsafe tar entry %r: hard link %r points outside" % (member.name, member.linkname))
    elif not (member.isreg() or member.isdir()):
        raise InstallError("unsafe tar entry %r: unsupported type %r" % (member.name, member.type))
    if path == "." and not member.isdir():
        raise InstallError("unsafe tar entry %r: names the target directory itself" % member.name)
    return path


def _make_parents(tree: dict, path: str, entry: str) -> None:
    """Add ``path``'s missing parent directories to ``tree``, as the unpacking creates them."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        parent = "/".join(parts[:end])
        kind = tree.get(parent, ("dir",))[0]
        if kind == "file":
            raise InstallError("tar entry %r: a file is in the way of a directory" % entry)
        if kind == "link":
            # Writing through a symlink could land anywhere the link leads; a model never needs it.
            raise InstallError("unsafe tar entry %r: its path goes through the symlink %r" % (entry, parent))
        tree.setdefault(parent, ("dir",))


def _resolve(tree: dict, path: str, entry: str) -> str:
    """Where ``path`` leads once the tree's symlinks are followed, the way the kernel (and
    os.path.realpath) follows them; InstallError when that is outside the tree or a loop."""
    pending = path.split("/")
    resolved: list = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise InstallError("unsafe tar entry %r: resolves outside the target through a symlink" % entry)
            resolved.pop()
            continue
        node = tree.get("/".join(resolved + [part]))
        if node is not None and node[0] == "link":
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise InstallError("unsafe tar entry %r: symlink loop" % entry)
            # Relative to the link's directory, which is what ``resolved`` holds now.
            pending = node[1].split("/") + pending
            continue
        resolved.append(part)
    return "/".join(resolved) or "."


def validate_members(members: list) -> tuple:
    """The one check of an archive's entries, run before anything is written, by check mode and
    the real run alike. It replays the entries on an in-memory tree, so it also catches what
    entries do together: a name twice (the second would overwrite the first), a path through a
    symlink, a hard link to a file not unpacked before it, a symlink that leads outside only
    through other symlinks (or through ones that come later). Returns (paths, needed bytes,
    model subdir)."""
    # path -> ("dir",) | ("file", size) | ("link", target)
    tree: dict = {".": ("dir",)}
    paths = []
    needed = 0
    for member in members:
        path = check_member(member)
        paths.append(path)
        if path == ".":
            continue
        _make_parents(tree, path, member.name)
        existing = tree.get(path)
        if existing is not None and not (member.isdir() and existing[0] == "dir"):
            raise InstallError("tar entry %r appears twice; refusing an ambiguous tarball" % member.name)
        if member.isdir():
            tree[path] = ("dir",)
        elif member.issym():
            tree[path] = ("link", member.linkname)
        elif member.islnk():
            # Unpacking copies the earlier file; any other target is missing then, or not a file.
            source = tree.get(os.path.normpath(member.linkname))
            if source is None or source[0] != "file":
                raise InstallError("tar entry %r: hard link to %r, which is not an earlier file"
                                   % (member.name, member.linkname))
            tree[path] = source
            needed += source[1]
        else:
            tree[path] = ("file", member.size)
            needed += member.size
    # Links are judged on the finished tree: a later entry can change where an earlier link leads.
    for path in sorted(tree):
        if tree[path][0] == "link":
            _resolve(tree, path, path)
    model_subdir = find_model_dir([path for path, member in zip(paths, members) if not member.isdir()])
    config = _resolve(tree, os.path.normpath(os.path.join(model_subdir, "config.json")), "config.json")
    if tree.get(config, ("missing",))[0] != "file":
        raise InstallError("config.json in %s is not a regular file inside the tarball" % model_subdir)
    return paths, needed, model_subdir


def check_end_of_archive(tar: tarfile.TarFile, src: str, members: list) -> None:
    """InstallError unless the entries tarfile read are followed by the end-of-archive marker and
    the (compressed) stream then ends cleanly."""
    stream = tar.fileobj
    try:
        # tarfile.offset: just past the last entry read. For a compressed stream the block is
        # normally still in its read buffer, so this seek back costs nothing.
        stream.seek(tar.offset)
        end = stream.read(len(END_OF_ARCHIVE))
        # Read to the end: gzip, xz and bzip2 check their own trailer (CRC, length) only there.
        while stream.read(_HASH_CHUNK):
            pass
    except _STREAM_END_ERRORS as exc:
        raise _corrupt(src, exc)
    if end != END_OF_ARCHIVE:
        last = ("after the entry %r" % members[-1].name) if members else "before any entry"
        raise _corrupt(src, "tar's end-of-archive marker (two zero blocks) is missing %s: the archive "
                            "was cut short or a header is damaged" % last)


def scan_tarball(tar: tarfile.TarFile, src: str) -> TarScan:
    """Read every header to the end-of-archive marker and validate the entries (both modes)."""
    try:
        members = tar.getmembers()
    except _TAR_READ_ERRORS as exc:
        raise _corrupt(src, exc)
    check_end_of_archive(tar, src, members)
    paths, needed, model_subdir = validate_members(members)
    return TarScan(members, paths, needed, model_subdir)


def _is_weight_file(name: str) -> bool:
    return name.endswith(".safetensors") or (name.startswith("pytorch_model") and name.endswith(".bin"))


def find_model_dir(file_paths: list) -> str:
    """The one directory (relative, "." for the top) holding config.json and weight files."""
    names_by_dir: dict = {}
    for path in file_paths:
        directory, name = os.path.split(os.path.normpath(path))
        names_by_dir.setdefault(directory or ".", set()).add(name)
    candidates = sorted(
        directory for directory, names in names_by_dir.items()
        if "config.json" in names and any(_is_weight_file(name) for name in names)
    )
    if not candidates:
        sample = ", ".join(sorted(os.path.normpath(p) for p in file_paths)[:8]) or "no files"
        raise InstallError(
            "no directory in the tarball holds config.json and weights (*.safetensors or "
            "pytorch_model*.bin); it has: %s" % sample
        )
    if len(candidates) > 1:
        raise InstallError("the tarball holds several models (%s); use a tarball with one" % ", ".join(candidates))
    return candidates[0]


# ---------------------------------------------------------------------------------------------
# Extraction into a staging directory


def _check_resolves_inside(root_real: str, path: str, entry: str) -> None:
    resolved = os.path.realpath(path)
    if resolved != root_real and not resolved.startswith(root_real + os.sep):
        raise InstallError("unsafe tar entry %r: resolves outside the target through a symlink" % entry)


def _file_mode(member: tarfile.TarInfo) -> int:
    return 0o755 if member.mode & 0o111 else 0o644


def _write_new_file(dest: str, source, mode: int, entry: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(dest, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise InstallError("tar entry %r appears twice; refusing an ambiguous tarball" % entry)
        raise
    with os.fdopen(fd, "wb") as handle:
        shutil.copyfileobj(source, handle, _HASH_CHUNK)
        os.fchmod(handle.fileno(), mode)


def _make_dirs(root_real: str, dest: str, entry: str) -> None:
    _check_resolves_inside(root_real, dest, entry)
    os.makedirs(dest, mode=0o755, exist_ok=True)
    if not os.path.isdir(dest):
        raise InstallError("tar entry %r: a file is in the way of a directory" % entry)


def extract_members(tar: tarfile.TarFile, scan: TarScan, root: str) -> None:
    """Unpack the members scan_tarball accepted under ``root``. The on-disk checks below repeat
    validate_members' verdict as a second line of defence; they do not decide anything it did not."""
    root_real = os.path.realpath(root)
    for member, path in zip(scan.members, scan.paths):
        dest = os.path.join(root_real, path)
        if member.isdir():
            if path != ".":
                _make_dirs(root_real, dest, member.name)
            continue
        parent = os.path.dirname(dest)
        _make_dirs(root_real, parent, member.name)
        _check_resolves_inside(root_real, parent, member.name)
        if member.issym():
            _check_resolves_inside(root_real, os.path.join(parent, member.linkname), member.name)
            try:
                os.symlink(member.linkname, dest)
            except FileExistsError:
                raise InstallError("tar entry %r appears twice; refusing an ambiguous tarball" % member.name)
        elif member.islnk():
            # Copy instead of linking: a hard link could tie the release to a file outside it.
            source = os.path.join(root_real, os.path.normpath(member.linkname))
            _check_resolves_inside(root_real, source, member.name)
            if not os.path.lexists(source) or not stat.S_ISREG(os.lstat(source).st_mode):
                raise InstallError("tar entry %r: hard link to %r, which is not an earlier file"
                                   % (member.name, member.linkname))
            with open(source, "rb") as handle:
                _write_new_file(dest, handle, stat.S_IMODE(os.stat(source).st_mode), member.name)
        else:
            source = tar.extractfile(member)
            if source is None:
                raise InstallError("tar entry %r has no data" % member.name)
            with source:
                _write_new_file(dest, source, _file_mode(member), member.name)
    # Last guard: no symlink in the tree may resolve outside it.
    for directory, dirnames, filenames in os.walk(root_real):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                _check_resolves_inside(root_real, path, os.path.relpath(path, root_real))


def unpack_release(src: str, sha256: str, releases_dir: str) -> str:
    """Unpack ``src`` into ``releases_dir/<sha256>`` via a staging dir; return the model subdir.

    The whole archive is read and checked before anything is written: a refused tarball leaves
    no release and no staging directory."""
    try:
        with tarfile.open(src, "r:*") as tar:
            scan = scan_tarball(tar, src)
            os.makedirs(releases_dir, mode=0o755, exist_ok=True)
            free = shutil.disk_usage(releases_dir).free
            if scan.needed + SPACE_MARGIN > free:
                raise InstallError(
                    "not enough disk space in %s: the model needs %d MiB, %d MiB are free"
                    % (releases_dir, (scan.needed + SPACE_MARGIN) >> 20, free >> 20)
                )
            remove_stale_staging(releases_dir)
            staging = tempfile.mkdtemp(prefix=STAGING_PREFIX + sha256[:12] + "-", dir=releases_dir)
            try:
                os.chmod(staging, 0o755)
                extract_members(tar, scan, staging)
                _finish_release(staging, src, sha256, scan.model_subdir, releases_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except _TAR_READ_ERRORS as exc:
        # Reading a member's data can still fail (a damaged compressed block).
        raise _corrupt(src, exc)
    return scan.model_subdir


def _finish_release(staging: str, src: str, sha256: str, model_subdir: str, releases_dir: str) -> None:
    """Mark the unpacked staging directory complete and rename it to the release."""
    if not os.path.isfile(os.path.join(staging, model_subdir, "config.json")):
        raise InstallError("config.json in %s is not a regular file inside the tarball" % model_subdir)
    write_marker(staging, {"sha256": sha256, "model_dir": model_subdir, "installed_at": time.time(),
                           "activated_at": 0.0, "source": os.path.basename(src)})
    release = os.path.join(releases_dir, sha256)
    if os.path.lexists(release):
        # Only a release without a valid marker gets here: a leftover, not a usable release.
        shutil.rmtree(release)
    os.rename(staging, release)
    fsync_dir(releases_dir)


def remove_stale_staging(releases_dir: str) -> None:
    for name in os.listdir(releases_dir):
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(releases_dir, name), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Releases, markers and the current link


def write_marker(release_dir: str, marker: dict) -> None:
    path = os.path.join(release_dir, MARKER_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(marker, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_marker(release_dir: str, sha256: str):
    """The release's marker, or None when the release is missing, incomplete or not this sha."""
    try:
        with open(os.path.join(release_dir, MARKER_FILE)) as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("sha256") != sha256:
        return None
    model_dir = os.path.join(release_dir, marker.get("model_dir", "."))
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return None
    return marker


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_sha256(models_root: str):
    """sha256 of the release ``current`` points into, or None when there is no current link."""
    link = os.path.join(models_root, CURRENT_LINK)
    if not os.path.lexists(link):
        return None
    if not os.path.islink(link):
        raise InstallError("%s exists and is not a symlink; move it away so releases can be switched" % link)
    target = os.path.normpath(os.path.join(models_root, os.readlink(link)))
    relative = os.path.relpath(target, os.path.join(models_root, RELEASES_DIR))
    first = relative.split(os.sep)[0]
    return first if SHA256_PATTERN.match(first) else None


def switch_current(models_root: str, sha256: str, model_subdir: str) -> None:
    """Point ``current`` at the release's model dir: a new symlink renamed over the old one."""
    link = os.path.join(models_root, CURRENT_LINK)
    target = os.path.normpath(os.path.join(RELEASES_DIR, sha256, model_subdir))
    tmp = os.path.join(models_root, ".%s.tmp-%d" % (CURRENT_LINK, os.getpid()))
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(models_root)


def releases_to_prune(releases_dir: str, keep_sha256: str, keep_releases: int) -> list:
    """Complete releases beyond the newest ``keep_releases`` (by last activation, ``keep_sha256``
    counting as one of them), newest first."""
    if not os.path.isdir(releases_dir):
        return []
    ranked = []
    for name in os.listdir(releases_dir):
        if not SHA256_PATTERN.match(name) or name == keep_sha256:
            continue
        marker = read_marker(os.path.join(releases_dir, name), name)
        if marker is not None:
            ranked.append((float(marker.get("activated_at", 0.0)), float(marker.get("installed_at", 0.0)), name))
    ranked.sort(reverse=True)
    # The kept sha256 takes one of the slots.
    return [name for _, _, name in ranked[keep_releases - 1:]]


# ---------------------------------------------------------------------------------------------
# The whole operation


def install(src, sha256: str, models_root: str, keep_releases: int = 2, check_mode: bool = False,
            now=time.time) -> dict:
    """Make ``sha256`` the current release of ``models_root``; return the module's result."""
    sha256 = (sha256 or "").strip().lower()
    if not SHA256_PATTERN.match(sha256):
        raise InstallError("sha256 must be 64 hex digits, got %r" % sha256)
    if keep_releases < MIN_KEEP_RELEASES:
        raise InstallError("keep_releases must be at least %d (the current release and one to roll back to)"
                           % MIN_KEEP_RELEASES)
    models_root = os.path.abspath(models_root)
    releases_dir = os.path.join(models_root, RELEASES_DIR)
    release_dir = os.path.join(releases_dir, sha256)
    previous = current_sha256(models_root)
    marker = read_marker(release_dir, sha256)
    checksum_verified = False
    model_subdir = marker["model_dir"] if marker else None

    if previous == sha256 and marker is not None:
        action = "none"
    elif marker is not None:
        action = "switch"
    else:
        action = "install"
        if check_mode:
            if src and os.path.exists(src):
                verify_checksum(src, sha256)
                checksum_verified = True
                model_subdir = inspect_tarball(src)
        else:
            if not src:
                raise InstallError("release %s is not on disk; pass src, the downloaded tarball" % sha256)
            verify_checksum(src, sha256)
            checksum_verified = True
            model_subdir = unpack_release(src, sha256, releases_dir)

    if action != "none" and not check_mode:
        marker = read_marker(release_dir, sha256)
        marker["activated_at"] = now()
        write_marker(release_dir, marker)
        switch_current(models_root, sha256, model_subdir)

    pruned = releases_to_prune(releases_dir, sha256, keep_releases)
    if not check_mode:
        for name in pruned:
            shutil.rmtree(os.path.join(releases_dir, name))

    model_dir = os.path.realpath(os.path.join(release_dir, model_subdir)) if model_subdir is not None else None
    return {
        "changed": action != "none" or bool(pruned),
        "action": action,
        "sha256": sha256,
        "current": os.path.join(models_root, CURRENT_LINK),
        "model_dir": model_dir,
        "release_dir": release_dir,
        "previous_sha256": previous,
        "pruned": pruned,
        "checksum_verified": checksum_verified,
    }


def inspect_tarball(src: str) -> str:
    """Check mode: the real run's reading and checks of the tarball (scan_tarball), writing nothing."""
    try:
        with tarfile.open(src, "r:*") as tar:
            return scan_tarball(tar, src).model_subdir
    except _TAR_READ_ERRORS as exc:
        raise _corrupt(src, exc)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path"},
            "sha256": {"type": "str", "required": True},
            "models_root": {"type": "path", "required": True},
            "keep_releases": {"type": "int", "default": 2},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = install(params["src"], params["sha256"], params["models_root"],
                         keep_releases=params["keep_releases"], check_mode=module.check_mode)
    except InstallError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="installing the model failed: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
