"""The fm9g_model_install Ansible module: safe unpacking, layout discovery, atomic switch."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = REPO_ROOT / "library" / "fm9g_model_install.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("fm9g_model_install", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mi = _load_module()


# -- building tarballs ------------------------------------------------------------------------

def _file(name: str, data: bytes = b"x", mode: int = 0o644):
    return ("file", name, data, mode)


def _dir(name: str):
    return ("dir", name, None, 0o755)


def _symlink(name: str, target: str):
    return ("symlink", name, target, 0o777)


def _hardlink(name: str, target: str):
    return ("hardlink", name, target, 0o644)


def _special(name: str, tar_type: bytes):
    return ("special", name, tar_type, 0o644)


def make_tar(path: Path, entries) -> str:
    """Write a tar with exactly these entries (in order); return its sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for kind, name, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            else:
                info.type = payload
            tar.addfile(info)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def model_entries(top: str = "model", weights: bytes = b"weights-1"):
    prefix = f"{top}/" if top else ""
    entries = [_dir(top)] if top else []
    return entries + [
        _file(f"{prefix}config.json", b'{"architectures": ["LlamaForCausalLM"]}'),
        _file(f"{prefix}model.safetensors", weights),
        _file(f"{prefix}tokenizer.json", b"{}"),
    ]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models" / "fm9g-4b"


def current_target(root: Path) -> str:
    return os.readlink(root / "current")


def install_model(tmp_path: Path, root: Path, name: str, weights: bytes, **kwargs) -> tuple[str, dict]:
    tarball = tmp_path / f"{name}.tar"
    sha = make_tar(tarball, model_entries(weights=weights))
    return sha, mi.install(str(tarball), sha, str(root), **kwargs)


# -- unsafe tarballs --------------------------------------------------------------------------

UNSAFE_TARBALLS = {
    "absolute path": [_file("/tmp/evil", b"x")],
    "dot-dot path": [_file("model/../../evil", b"x")],
    "dot-dot at top": [_file("../evil", b"x")],
    "symlink to absolute path": [_symlink("model/evil", "/etc/passwd")],
    "symlink pointing outside": [_symlink("model/evil", "../../outside")],
    "hard link pointing outside": [_hardlink("model/evil", "../outside")],
    "hard link to absolute path": [_hardlink("model/evil", "/etc/passwd")],
    "character device": [_special("model/tty", tarfile.CHRTYPE)],
    "block device": [_special("model/disk", tarfile.BLKTYPE)],
    "fifo": [_special("model/pipe", tarfile.FIFOTYPE)],
    # Each link alone stays inside on paper; b resolves through a to one level above the target.
    "symlink escaping through another symlink": [_symlink("model/a", "."), _symlink("model/b", "a/../..")],
    # l1 dangles when written and looks inside; l2 then makes it resolve above the target.
    "symlink made to escape by a later symlink": [_symlink("model/l1", "l2/../.."), _symlink("model/l2", ".")],
    "file written through an escaping symlink": [
        _symlink("model/l1", "l2/../.."), _symlink("model/l2", "."), _file("model/l1/evil", b"x"),
    ],
    "duplicate entry": [_file("model/config.json", b"{}"), _file("model/config.json", b"{}")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARBALLS))
def test_unsafe_tarball_is_refused_and_nothing_escapes(tmp_path: Path, root: Path, case: str):
    old_sha, _ = install_model(tmp_path, root, "old", b"old weights")
    tarball = tmp_path / "evil.tar"
    sha = make_tar(tarball, model_entries() + UNSAFE_TARBALLS[case])
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(mi.InstallError, match="unsafe tar entry|appears twice"):
        mi.install(str(tarball), sha, str(root))

    assert current_target(root) == f"releases/{old_sha}/model"
    assert sorted(os.listdir(root / "releases")) == [old_sha], "no release and no staging dir left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written outside the models root"
    assert not Path("/tmp/evil").exists()


def test_unsafe_tarball_is_refused_in_check_mode_too(tmp_path: Path, root: Path):
    tarball = tmp_path / "evil.tar"
    sha = make_tar(tarball, model_entries() + [_symlink("model/evil", "/etc/passwd")])
    with pytest.raises(mi.InstallError, match="symlink to absolute path"):
        mi.install(str(tarball), sha, str(root), check_mode=True)
    assert not root.exists()


def test_links_that_stay_inside_are_unpacked(tmp_path: Path, root: Path):
    tarball = tmp_path / "links.tar"
    sha = make_tar(tarball, [
        _dir("model"), _dir("blobs"),
        _file("blobs/weights", b"real weights"),
        _file("model/config.json", b"{}"),
        _symlink("model/model.safetensors", "../blobs/weights"),
        _hardlink("model/copy.bin", "blobs/weights"),
    ])
    result = mi.install(str(tarball), sha, str(root))
    model_dir = Path(result["model_dir"])
    assert (model_dir / "model.safetensors").read_bytes() == b"real weights"
    copy = model_dir / "copy.bin"
    assert copy.read_bytes() == b"real weights"
    assert not copy.is_symlink() and copy.stat().st_nlink == 1, "hard links become independent copies"


def test_archive_modes_and_owners_are_not_trusted(tmp_path: Path, root: Path):
    tarball = tmp_path / "modes.tar"
    sha = make_tar(tarball, [
        _dir("model"),
        _file("model/config.json", b"{}", mode=0o4777),
        _file("model/model.safetensors", b"w", mode=0o600),
        _file("model/run.sh", b"#!/bin/sh\n", mode=0o700),
    ])
    model_dir = Path(mi.install(str(tarball), sha, str(root))["model_dir"])
    modes = {p.name: p.stat().st_mode & 0o7777 for p in model_dir.iterdir()}
    assert modes == {"config.json": 0o755, "model.safetensors": 0o644, "run.sh": 0o755}


# -- layout discovery -------------------------------------------------------------------------

@pytest.mark.parametrize(("paths", "expected"), [
    (["9G4B/config.json", "9G4B/pytorch_model.bin", "9G4B/tokenizer.json"], "9G4B"),
    (["a/b/config.json", "a/b/model-00001-of-00002.safetensors", "a/README.md", "a/b/x.py"], "a/b"),
    (["./config.json", "./model.safetensors"], "."),
    (["config.json", "pytorch_model-00001-of-00003.bin"], "."),
])
def test_find_model_dir(paths, expected):
    assert mi.find_model_dir(paths) == expected


@pytest.mark.parametrize(("paths", "message"), [
    (["model/config.json", "model/tokenizer.json"], "no directory in the tarball holds config.json and weights"),
    (["model/model.safetensors"], "no directory in the tarball holds config.json and weights"),
    (["config.json", "a/model.safetensors"], "no directory in the tarball holds config.json and weights"),
    (["a/config.json", "a/model.safetensors", "b/config.json", "b/pytorch_model.bin"], "several models"),
])
def test_find_model_dir_refuses_missing_or_ambiguous_models(paths, message):
    with pytest.raises(mi.InstallError, match=message):
        mi.find_model_dir(paths)


def test_flat_tarball_installs_with_the_release_as_model_dir(tmp_path: Path, root: Path):
    tarball = tmp_path / "flat.tar"
    sha = make_tar(tarball, model_entries(top=""))
    result = mi.install(str(tarball), sha, str(root))
    assert current_target(root) == f"releases/{sha}"
    assert result["model_dir"] == os.path.realpath(root / "releases" / sha)
    assert (root / "current" / "config.json").is_file()


def test_nested_tarball_points_current_at_the_model_dir(tmp_path: Path, root: Path):
    tarball = tmp_path / "nested.tar"
    sha = make_tar(tarball, [_dir("outer"), _file("outer/README.md", b"readme")]
                   + [(k, "outer/" + n, p, m) for k, n, p, m in model_entries(top="inner")])
    result = mi.install(str(tarball), sha, str(root))
    assert current_target(root) == f"releases/{sha}/outer/inner"
    assert result["model_dir"] == os.path.realpath(root / "releases" / sha / "outer" / "inner")
    assert result["sha256"] == sha and result["checksum_verified"] is True


# -- switching, idempotence, rollback, pruning ------------------------------------------------

def test_second_run_changes_nothing_and_needs_no_tarball(tmp_path: Path, root: Path):
    sha, first = install_model(tmp_path, root, "m", b"w")
    assert first["changed"] is True and first["action"] == "install" and first["previous_sha256"] is None
    (tmp_path / "m.tar").unlink()
    second = mi.install(str(tmp_path / "m.tar"), sha, str(root))
    assert second["changed"] is False and second["action"] == "none"
    assert second["model_dir"] == first["model_dir"]
    assert second["checksum_verified"] is False


def test_switch_replaces_current_atomically_and_keeps_the_previous_release(tmp_path: Path, root: Path, monkeypatch):
    old_sha, _ = install_model(tmp_path, root, "old", b"old")
    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        if str(dst) == str(root / "current"):
            # At the moment of the rename the old link is still in place and the new one is ready.
            seen.append((os.readlink(dst), os.readlink(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(mi.os, "replace", spying_replace)
    new_sha, result = install_model(tmp_path, root, "new", b"new")
    assert seen == [(f"releases/{old_sha}/model", f"releases/{new_sha}/model")]
    assert current_target(root) == f"releases/{new_sha}/model"
    assert result["previous_sha256"] == old_sha
    assert (root / "releases" / old_sha / "model" / "config.json").is_file()
    assert sorted(os.listdir(root)) == ["current", "releases"], "no temporary link left behind"


def test_rollback_to_a_release_on_disk_needs_no_tarball(tmp_path: Path, root: Path):
    old_sha, _ = install_model(tmp_path, root, "old", b"old")
    new_sha, _ = install_model(tmp_path, root, "new", b"new")
    result = mi.install(None, old_sha, str(root))
    assert result["action"] == "switch" and result["changed"] is True
    assert result["checksum_verified"] is False and result["previous_sha256"] == new_sha
    assert current_target(root) == f"releases/{old_sha}/model"


def test_older_releases_are_pruned_keeping_current_and_previous(tmp_path: Path, root: Path):
    clock = iter(range(100, 200))
    now = lambda: float(next(clock))  # noqa: E731 - a deterministic clock for activation order
    sha_a, _ = install_model(tmp_path, root, "a", b"a", now=now)
    sha_b, _ = install_model(tmp_path, root, "b", b"b", now=now)
    sha_c, result = install_model(tmp_path, root, "c", b"c", now=now)
    assert result["pruned"] == [sha_a]
    assert sorted(os.listdir(root / "releases")) == sorted([sha_b, sha_c])
    # Rolling back to b makes c the previous release: it is kept.
    result = mi.install(None, sha_b, str(root), now=now)
    assert result["pruned"] == [] and sorted(os.listdir(root / "releases")) == sorted([sha_b, sha_c])


def test_keep_releases_allows_more_history(tmp_path: Path, root: Path):
    shas = [install_model(tmp_path, root, name, name.encode(), keep_releases=3)[0] for name in "abcd"]
    assert sorted(os.listdir(root / "releases")) == sorted(shas[1:])


def test_keep_releases_below_two_is_refused(tmp_path: Path, root: Path):
    tarball = tmp_path / "m.tar"
    sha = make_tar(tarball, model_entries())
    with pytest.raises(mi.InstallError, match="keep_releases must be at least 2"):
        mi.install(str(tarball), sha, str(root), keep_releases=1)


# -- corrupt downloads ------------------------------------------------------------------------

def test_hash_mismatch_fails_and_leaves_current(tmp_path: Path, root: Path):
    old_sha, _ = install_model(tmp_path, root, "old", b"old")
    tarball = tmp_path / "new.tar"
    good_sha = make_tar(tarball, model_entries(weights=b"new"))
    tarball.write_bytes(tarball.read_bytes()[:-1024])  # a download cut short
    with pytest.raises(mi.InstallError, match=f"sha256 mismatch .*expected {good_sha}"):
        mi.install(str(tarball), good_sha, str(root))
    assert current_target(root) == f"releases/{old_sha}/model"
    assert os.listdir(root / "releases") == [old_sha]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_tarball_with_matching_hash_fails_and_leaves_current(tmp_path: Path, root: Path, damage: str):
    old_sha, _ = install_model(tmp_path, root, "old", b"old")
    tarball = tmp_path / "bad.tar"
    make_tar(tarball, model_entries(weights=b"w" * 100_000))
    data = b"not a tar file at all" * 100 if damage == "garbage" else tarball.read_bytes()[:50_000]
    tarball.write_bytes(data)
    with pytest.raises(mi.InstallError, match="is corrupt or truncated"):
        mi.install(str(tarball), hashlib.sha256(data).hexdigest(), str(root))
    assert current_target(root) == f"releases/{old_sha}/model"
    assert os.listdir(root / "releases") == [old_sha], "staging dir removed"


def test_missing_tarball_for_a_new_release_is_a_clear_error(tmp_path: Path, root: Path):
    with pytest.raises(mi.InstallError, match="not found; download it first"):
        mi.install(str(tmp_path / "absent.tar"), "a" * 64, str(root))


def test_current_that_is_a_real_directory_is_not_replaced(tmp_path: Path, root: Path):
    (root / "current").mkdir(parents=True)
    tarball = tmp_path / "m.tar"
    sha = make_tar(tarball, model_entries())
    with pytest.raises(mi.InstallError, match="is not a symlink"):
        mi.install(str(tarball), sha, str(root))
    assert (root / "current").is_dir() and not (root / "releases").exists()


def test_bad_sha256_is_refused(tmp_path: Path, root: Path):
    with pytest.raises(mi.InstallError, match="64 hex digits"):
        mi.install(str(tmp_path / "m.tar"), "abc", str(root))


# -- check mode -------------------------------------------------------------------------------

def test_check_mode_on_a_fresh_host_reports_and_touches_nothing(tmp_path: Path, root: Path):
    tarball = tmp_path / "m.tar"
    sha = make_tar(tarball, model_entries())
    result = mi.install(str(tarball), sha, str(root), check_mode=True)
    assert result["changed"] is True and result["action"] == "install"
    assert result["checksum_verified"] is True
    assert result["model_dir"] == os.path.realpath(root / "releases" / sha / "model")
    assert not root.exists()


def test_check_mode_with_a_new_release_keeps_current(tmp_path: Path, root: Path):
    old_sha, _ = install_model(tmp_path, root, "old", b"old")
    snapshot = sorted(str(p) for p in root.rglob("*"))
    tarball = tmp_path / "new.tar"
    sha = make_tar(tarball, model_entries(weights=b"new"))
    result = mi.install(str(tarball), sha, str(root), check_mode=True)
    assert result["changed"] is True and result["previous_sha256"] == old_sha
    assert current_target(root) == f"releases/{old_sha}/model"
    assert sorted(str(p) for p in root.rglob("*")) == snapshot


def test_check_mode_without_the_download_still_reports_a_change(tmp_path: Path, root: Path):
    # In a check run the download task before this one did not download anything.
    result = mi.install(str(tmp_path / "not-yet.tar"), "b" * 64, str(root), check_mode=True)
    assert result["changed"] is True and result["model_dir"] is None and result["checksum_verified"] is False


def test_check_mode_detects_a_corrupt_download(tmp_path: Path, root: Path):
    tarball = tmp_path / "m.tar"
    make_tar(tarball, model_entries())
    with pytest.raises(mi.InstallError, match="sha256 mismatch"):
        mi.install(str(tarball), "c" * 64, str(root), check_mode=True)


def test_check_mode_reports_pruning_without_pruning(tmp_path: Path, root: Path):
    sha_a, _ = install_model(tmp_path, root, "a", b"a")
    install_model(tmp_path, root, "b", b"b")
    tarball = tmp_path / "c.tar"
    sha_c = make_tar(tarball, model_entries(weights=b"c"))
    result = mi.install(str(tarball), sha_c, str(root), check_mode=True)
    assert result["pruned"] == [sha_a]
    assert (root / "releases" / sha_a).is_dir()


# -- as Ansible runs it -----------------------------------------------------------------------

def run_as_ansible(tmp_path: Path, args: dict) -> dict:
    """Run the module file the way Ansible does, with its arguments in a JSON file."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(MODULE_PATH), str(args_file)],
                          capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout)


def test_module_entry_point_installs_then_reports_no_change(tmp_path: Path, root: Path):
    tarball = tmp_path / "m.tar"
    sha = make_tar(tarball, model_entries())
    args = {"src": str(tarball), "sha256": sha.upper(), "models_root": str(root)}
    check = run_as_ansible(tmp_path, {**args, "_ansible_check_mode": True})
    assert check["changed"] is True and not root.exists()
    first = run_as_ansible(tmp_path, args)
    assert first["changed"] is True and first["sha256"] == sha
    assert first["model_dir"] == os.path.realpath(root / "current")
    again = run_as_ansible(tmp_path, args)
    assert again["changed"] is False


def test_module_entry_point_fails_with_one_clear_message(tmp_path: Path, root: Path):
    tarball = tmp_path / "m.tar"
    make_tar(tarball, model_entries())
    result = run_as_ansible(tmp_path, {"src": str(tarball), "sha256": "d" * 64, "models_root": str(root)})
    assert result["failed"] is True
    assert "sha256 mismatch" in result["msg"] and "current model is unchanged" in result["msg"]
