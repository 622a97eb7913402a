"""A corpus of hostile and damaged model tarballs for fm9g_model_install, each run through check mode
and the real run: both must give the same verdict (the same error, or the same model directory).

Every tarball is generated here, in memory; no binary is committed. A refused tarball must leave
``current`` and the releases as they were (no release or staging directory behind) and write nothing
anywhere else.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import tarfile
from pathlib import Path

import pytest

from tests.unit.test_model_install import install_model, mi

BLOCK = tarfile.BLOCKSIZE


# -- building tarballs --------------------------------------------------------------------------

def entry(name: str, kind: str = "file", payload=b"x", pax: bool = False) -> tuple:
    """(TarInfo, data) of one member; ``pax`` puts the name in a pax header (how a NUL
    reaches a member name: the ustar field ends at the first NUL)."""
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    data = b""
    if kind == "file":
        data, info.size = payload, len(payload)
    elif kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, payload
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, payload
    else:
        info.type = kind  # a raw tar type: devices, fifos
    if pax:
        info.pax_headers = {"path": name}
    return info, data


def model(top: str = "model", weights: bytes = b"weights") -> list:
    return [entry(top, "dir"), entry(f"{top}/config.json", payload=b"{}"),
            entry(f"{top}/model.safetensors", payload=weights), entry(f"{top}/tokenizer.json", payload=b"{}")]


def tar_bytes(entries: list) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def end_of_last_entry(data: bytes) -> int:
    """Offset just past the last member's data and its padding: where the end marker begins."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // BLOCK) * BLOCK


def cut_at_end_marker(data: bytes, keep_zero_blocks: int = 0) -> bytes:
    return data[:end_of_last_entry(data) + keep_zero_blocks * BLOCK]


def with_damaged_header(data: bytes, name: str) -> bytes:
    """``data`` with member ``name``'s header block overwritten: tarfile then stops before it."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmember(name).offset
    return data[:offset] + b"\xff" * BLOCK + data[offset + BLOCK:]


def cut_inside_header(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmember(name).offset
    return data[:offset + 100]


def gzip_with_bad_crc(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[-8] ^= 0xFF  # the trailer: CRC32 (4 bytes), then the length
    return bytes(packed)


ESCAPES = "unsafe tar entry"
TWICE = "appears twice"
TRUNCATED = "is corrupt or truncated"
NO_MARKER = TRUNCATED + r" \(tar's end-of-archive marker \(two zero blocks\) is missing after the entry"

#: name -> (tarball bytes, what the refusal says). Members before any damage are always complete.
HOSTILE = {
    # names
    "absolute path": (tar_bytes(model() + [entry("/tmp/fm9g-corpus-evil")]), ESCAPES + ".*absolute path"),
    "dot-dot inside the path": (tar_bytes(model() + [entry("model/../../evil")]), r"'\.\.' in the path"),
    "dot-dot at the top": (tar_bytes(model() + [entry("../evil")]), r"'\.\.' in the path"),
    "NUL in a name (pax header)": (tar_bytes(model() + [entry("model/a\x00b", pax=True)]), "control character"),
    "newline in a name": (tar_bytes(model() + [entry("model/a\nb", pax=True)]), "control character"),
    "newline in a symlink target": (tar_bytes(model() + [entry("model/l", "symlink", "config.json\nx")]),
                                    "control character"),
    "the release marker's name": (tar_bytes(model() + [entry(".fm9g-release.json", payload=b"{}")]),
                                  "reserved for the release marker"),
    "the target itself as a file": (tar_bytes(model() + [entry(".")]), "names the target directory itself"),
    # types
    "character device": (tar_bytes(model() + [entry("model/tty", tarfile.CHRTYPE)]), "device file"),
    "block device": (tar_bytes(model() + [entry("model/disk", tarfile.BLKTYPE)]), "device file"),
    "fifo": (tar_bytes(model() + [entry("model/pipe", tarfile.FIFOTYPE)]), "fifo"),
    # symlinks
    "symlink to an absolute path": (tar_bytes(model() + [entry("model/l", "symlink", "/etc/passwd")]),
                                    "symlink to absolute path"),
    "symlink pointing outside": (tar_bytes(model() + [entry("model/l", "symlink", "../../outside")]),
                                 "points outside"),
    "symlink with an empty target": (tar_bytes(model() + [entry("model/l", "symlink", "")]), "empty target"),
    "symlink escaping through another symlink": (
        tar_bytes(model() + [entry("model/a", "symlink", "."), entry("model/b", "symlink", "a/../..")]),
        "resolves outside the target through a symlink"),
    "symlink made to escape by a later symlink": (
        tar_bytes(model() + [entry("model/l1", "symlink", "l2/../.."), entry("model/l2", "symlink", ".")]),
        "resolves outside the target through a symlink"),
    "file written through an escaping symlink": (
        tar_bytes(model() + [entry("model/l1", "symlink", "l2/../.."), entry("model/l2", "symlink", "."),
                             entry("model/l1/evil")]),
        "goes through the symlink"),
    "file written through a symlink to a directory": (
        tar_bytes(model() + [entry("model/sub", "symlink", "."), entry("model/sub/extra")]),
        "goes through the symlink 'model/sub'"),
    "symlink loop": (tar_bytes(model() + [entry("model/a", "symlink", "b"), entry("model/b", "symlink", "a")]),
                     "symlink loop"),
    # hard links
    "hard link pointing outside": (tar_bytes(model() + [entry("model/h", "hardlink", "../outside")]),
                                   "hard link .* points outside"),
    "hard link to an absolute path": (tar_bytes(model() + [entry("model/h", "hardlink", "/etc/passwd")]),
                                      "hard link .* points outside"),
    "hard link to a later file": (tar_bytes(model() + [entry("model/h", "hardlink", "model/later"),
                                                       entry("model/later")]), "not an earlier file"),
    "hard link to a missing file": (tar_bytes(model() + [entry("model/h", "hardlink", "model/absent")]),
                                    "not an earlier file"),
    "hard link to a symlink": (tar_bytes(model() + [entry("model/l", "symlink", "config.json"),
                                                    entry("model/h", "hardlink", "model/l")]), "not an earlier file"),
    "hard link to a directory": (tar_bytes(model() + [entry("model/h", "hardlink", "model")]),
                                 "not an earlier file"),
    # overwriting
    "file twice": (tar_bytes(model() + [entry("model/config.json", payload=b'{"x": 1}')]), TWICE),
    "file twice under another spelling": (tar_bytes(model() + [entry("./model//config.json")]), TWICE),
    "directory over a file": (tar_bytes(model() + [entry("model/tokenizer.json", "dir")]), TWICE),
    "file over a directory": (tar_bytes(model() + [entry("model/sub", "dir"), entry("model/sub")]), TWICE),
    "file over a symlink": (tar_bytes(model() + [entry("model/l", "symlink", "config.json"), entry("model/l")]),
                            TWICE),
    "symlink over a file": (tar_bytes(model() + [entry("model/tokenizer.json", "symlink", "config.json")]), TWICE),
    "hard link over a file": (tar_bytes(model() + [entry("model/tokenizer.json", "hardlink", "model/config.json")]),
                              TWICE),
    "a file in the way of a directory": (tar_bytes(model() + [entry("model/tokenizer.json/x")]),
                                         "a file is in the way of a directory"),
    # the model directory
    "config.json a symlink to a directory": (
        tar_bytes([entry("model", "dir"), entry("model/sub", "dir"), entry("model/config.json", "symlink", "sub"),
                   entry("model/model.safetensors", payload=b"w")]),
        "config.json in model is not a regular file"),
    "config.json a dangling symlink": (
        tar_bytes([entry("model", "dir"), entry("model/config.json", "symlink", "absent.json"),
                   entry("model/model.safetensors", payload=b"w")]),
        "config.json in model is not a regular file"),
    # cut short or damaged, every entry before the damage complete
    "no end-of-archive marker": (cut_at_end_marker(tar_bytes(model())), NO_MARKER + " 'model/tokenizer.json'"),
    "one zero block of two": (cut_at_end_marker(tar_bytes(model()), 1), NO_MARKER),
    "cut in the last entry's padding": (tar_bytes(model())[:end_of_last_entry(tar_bytes(model())) - 100], TRUNCATED),
    "cut inside a header": (cut_inside_header(tar_bytes(model() + [entry("model/extra.txt")]), "model/extra.txt"),
                            NO_MARKER + " 'model/tokenizer.json'"),
    "damaged header mid-archive": (
        with_damaged_header(tar_bytes(model() + [entry("model/extra.txt"), entry("model/more.txt")]),
                            "model/extra.txt"),
        NO_MARKER + " 'model/tokenizer.json'"),
    "cut in the last entry's data": (tar_bytes(model(weights=b"w" * 5000))[:BLOCK * 8], TRUNCATED),
    "gzip of a tar without its end marker": (gzip.compress(cut_at_end_marker(tar_bytes(model()))), NO_MARKER),
    "gzip without its trailer": (gzip.compress(tar_bytes(model()))[:-8], TRUNCATED),
    "gzip with a wrong CRC": (gzip_with_bad_crc(tar_bytes(model())), TRUNCATED),
    "bzip2 cut short": (bz2.compress(tar_bytes(model()))[:-10], TRUNCATED),
    "xz cut short": (lzma.compress(tar_bytes(model()))[:-10], TRUNCATED),
    "not a tarball": (b"not a tar file at all" * 100, TRUNCATED),
}

#: Tarballs both modes must accept, with the model directory they report.
ACCEPTED = {
    "plain": (tar_bytes(model()), "model"),
    "entries under ./ and repeated directory entries": (
        tar_bytes([entry(".", "dir"), entry("./model", "dir"), entry("./model/", "dir")]
                  + [entry("./" + info.name, "file", data) for info, data in model()[1:]]), "model"),
    "links that stay inside": (
        tar_bytes([entry("blobs", "dir"), entry("blobs/w", payload=b"real"), entry("model", "dir"),
                   entry("model/config.json", "symlink", "../blobs/c"), entry("blobs/c", payload=b"{}"),
                   entry("model/model.safetensors", "symlink", "../blobs/w"),
                   entry("model/copy.bin", "hardlink", "blobs/w")]), "model"),
    "long names (pax)": (tar_bytes(model(top="m" * 150)), "m" * 150),
    "zero padding after the end marker": (tar_bytes(model()) + b"\0" * 20 * BLOCK, "model"),
    "gzip": (gzip.compress(tar_bytes(model())), "model"),
    "bzip2": (bz2.compress(tar_bytes(model())), "model"),
    "xz": (lzma.compress(tar_bytes(model())), "model"),
}


# -- running a case in both modes --------------------------------------------------------------------

def tree(folder: Path) -> dict:
    """Every path under ``folder`` with its type and content (or link target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_dir():
            found[key] = ("dir",)
        else:
            found[key] = ("file", path.read_bytes())
    return found


@pytest.fixture
def world(tmp_path: Path):
    """A models root with a release already current, and a folder beside it that must stay as it is."""
    root = tmp_path / "models" / "fm9g-4b"
    old_sha, _ = install_model(tmp_path, root, "old", b"old weights")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched")
    return tmp_path, root, old_sha


def verdict(tarball: Path, sha: str, root: Path, check_mode: bool):
    try:
        return "accepted", mi.install(str(tarball), sha, str(root), check_mode=check_mode)["model_dir"]
    except mi.InstallError as exc:
        return "refused", str(exc)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarball_gets_the_same_refusal_in_check_mode_and_the_real_run(world, case):
    tmp_path, root, old_sha = world
    data, message = HOSTILE[case]
    tarball = tmp_path / "hostile.tar"
    tarball.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    before = tree(tmp_path)

    checked = verdict(tarball, sha, root, check_mode=True)
    assert checked[0] == "refused", f"check mode accepted {case!r}"
    assert re.search(message, checked[1]), checked[1]
    assert tree(tmp_path) == before, "check mode wrote something"

    assert verdict(tarball, sha, root, check_mode=False) == checked
    assert tree(tmp_path) == before, "the refused real run left something behind or wrote outside"
    assert os.readlink(root / "current") == f"releases/{old_sha}/model"
    assert not (root / "releases" / sha).exists()
    assert not Path("/tmp/fm9g-corpus-evil").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarball_on_a_fresh_host_leaves_no_release_directory(tmp_path, case):
    data, message = HOSTILE[case]
    tarball = tmp_path / "hostile.tar"
    tarball.write_bytes(data)
    root = tmp_path / "models" / "fm9g-4b"
    with pytest.raises(mi.InstallError, match=message):
        mi.install(str(tarball), hashlib.sha256(data).hexdigest(), str(root))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar"], "no models root, no release, no staging"


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_sound_tarball_is_accepted_by_both_modes_alike(world, case):
    tmp_path, root, old_sha = world
    data, subdir = ACCEPTED[case]
    tarball = tmp_path / "sound.tar"
    tarball.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    outside = tree(tmp_path / "outside")

    checked = verdict(tarball, sha, root, check_mode=True)
    assert checked == ("accepted", os.path.realpath(root / "releases" / sha / subdir))
    assert verdict(tarball, sha, root, check_mode=False) == checked
    assert os.readlink(root / "current") == os.path.normpath(f"releases/{sha}/{subdir}")
    assert (root / "current" / "config.json").read_bytes() == b"{}"
    assert tree(tmp_path / "outside") == outside
    release = (root / "releases" / sha).resolve()
    for path in release.rglob("*"):
        assert os.path.realpath(path).startswith(str(release) + os.sep), f"{path} leads outside the release"


def test_check_mode_and_the_real_run_read_with_one_function(monkeypatch, tmp_path):
    """Check mode and the real run read the archive with one function (scan_tarball)."""
    calls = []
    real = mi.scan_tarball
    monkeypatch.setattr(mi, "scan_tarball", lambda tar, src: calls.append(src) or real(tar, src))
    data = tar_bytes(model())
    tarball = tmp_path / "m.tar"
    tarball.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    mi.install(str(tarball), sha, str(tmp_path / "root"), check_mode=True)
    mi.install(str(tarball), sha, str(tmp_path / "root"))
    assert calls == [str(tarball), str(tarball)]
