"""Pieces for air-gapped hosts: pack into size-bounded piece folders, join them back sha256-checked,
with the standard library only (the host has the fm9g_deploy source and nothing else)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fm9g_deploy.artifacts import pieces
from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.lock import Lock, LockedArtifact, LockTarget, lock_text
from fm9g_deploy.artifacts.pieces import PieceError, PieceUsageError, join, pack, parse_size
from fm9g_deploy.cli import main as cli_main
from tests.conftest import PROJECT_ROOT
from tests.fixtures.artifacts.wheels import make_wheel, sha256_of

PIECE = 1000


def _sources(tmp_path: Path, sizes: dict[str, int]) -> list[tuple[Path, str, str]]:
    """Real files of random bytes: (path, name, sha256) in the given order."""
    folder = tmp_path / "src"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, size in sizes.items():
        path = folder / name
        path.write_bytes(os.urandom(size))
        files.append((path, name, sha256_of(path)))
    return files


@pytest.fixture
def packed(tmp_path):
    # 2500 spans three pieces, the small ones share pieces, the empty one sits on a boundary.
    files = _sources(tmp_path, {"big.whl": 2500, "small.whl": 300, "empty.whl": 0, "tiny.whl": 7,
                                "mid.whl": 1200})
    out = tmp_path / "pack"
    steps: list[str] = []
    manifest = pack(files, out, PIECE, on_step=steps.append, meta={"profile": "test"})
    return files, out, manifest, steps


def _pieces(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def test_round_trip_across_piece_boundaries(packed, tmp_path):
    files, out, manifest, steps = packed
    total = sum(path.stat().st_size for path, _, _ in files)
    folders = _pieces(out)
    assert [f.name for f in folders] == [f"piece-{i:03d}" for i in range(-(-total // PIECE))]
    assert all((f / "data").stat().st_size <= PIECE for f in folders)
    assert sum((f / "data").stat().st_size for f in folders) == total == manifest["total_size"]
    assert len(steps) == len(folders)

    written = join(out, tmp_path / "joined")
    assert [p.name for p in written] == [name for _, name, _ in files]
    for path, name, _ in files:
        assert (tmp_path / "joined" / name).read_bytes() == path.read_bytes()
    assert not [p for p in (tmp_path / "joined").iterdir() if p.name.startswith(".")]  # no temporary left


def test_manifest_lists_files_and_pieces_and_every_piece_carries_a_copy(packed):
    files, out, manifest, _ = packed
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["format_version"] == 1 and on_disk["meta"] == {"profile": "test"}
    offset = 0
    for (path, name, sha), entry in zip(files, on_disk["files"]):
        assert entry == {"name": name, "size": path.stat().st_size, "sha256": sha, "offset": offset}
        offset += entry["size"]
    for folder, piece in zip(_pieces(out), on_disk["pieces"]):
        assert piece["folder"] == folder.name
        assert piece["size"] == (folder / "data").stat().st_size
        assert piece["sha256"] == sha256_of(folder / "data")
        assert json.loads((folder / "manifest.json").read_text()) == manifest
        assert sorted(p.name for p in folder.iterdir()) == ["data", "manifest.json"]


def test_files_smaller_than_a_piece_and_one_piece_only(tmp_path):
    files = _sources(tmp_path, {"a.whl": 10, "b.whl": 20})
    pack(files, tmp_path / "pack", 1024)
    assert [f.name for f in _pieces(tmp_path / "pack")] == ["piece-000"]
    # Join takes piece folders as well as the folder holding them.
    join([tmp_path / "pack" / "piece-000"], tmp_path / "joined")
    assert (tmp_path / "joined" / "b.whl").read_bytes() == files[1][0].read_bytes()


def test_a_corrupted_byte_fails_naming_the_piece_and_writes_nothing(packed, tmp_path):
    _, out, _, _ = packed
    data = out / "piece-002" / "data"
    raw = bytearray(data.read_bytes())
    raw[17] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(PieceError) as caught:
        join(out, tmp_path / "joined")
    message = str(caught.value)
    assert "\n" not in message
    assert "piece-002 is corrupt" in message and "carry piece-002 again" in message
    assert "piece-001" not in message
    assert not (tmp_path / "joined").exists() or not any((tmp_path / "joined").iterdir())


def test_a_piece_that_changes_during_join_leaves_no_bad_file(packed, tmp_path, monkeypatch):
    # Pieces checked fine, then the bytes read while writing differ: the file's own hash stops it.
    _, out, _, _ = packed
    real = pieces._read_range

    def flipped(piece_list, offset, size):
        for chunk in real(piece_list, offset, size):
            yield bytes([chunk[0] ^ 1]) + chunk[1:] if chunk else chunk

    monkeypatch.setattr(pieces, "_read_range", flipped)
    with pytest.raises(PieceError, match="big.whl: the joined bytes hash to"):
        join(out, tmp_path / "joined")
    assert list((tmp_path / "joined").iterdir()) == []


def test_a_missing_piece_is_named(packed, tmp_path):
    _, out, _, _ = packed
    shutil.rmtree(out / "piece-003")
    with pytest.raises(PieceError) as caught:
        join(out, tmp_path / "joined")
    message = str(caught.value)
    assert "piece-003 is missing" in message and "\n" not in message
    assert "nothing was written" in message
    assert not (tmp_path / "joined").exists()


def test_a_truncated_piece_says_so(packed, tmp_path):
    _, out, _, _ = packed
    data = out / "piece-001" / "data"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(PieceError, match=r"piece-001 has 990 bytes instead of 1000"):
        join(out, tmp_path / "joined")


def test_pieces_carried_without_the_root_and_renamed_still_join(packed, tmp_path):
    files, out, _, _ = packed
    carried = tmp_path / "carried"
    for number, folder in enumerate(_pieces(out)):
        shutil.copytree(folder, carried / f"transfer-{number}")  # the channel named the folders its own way
    join(carried, tmp_path / "joined")
    for path, name, _ in files:
        assert (tmp_path / "joined" / name).read_bytes() == path.read_bytes()


def test_pieces_of_another_pack_are_refused(packed, tmp_path):
    _, out, _, _ = packed
    other = _sources(tmp_path / "other", {"x.whl": 50})
    pack(other, tmp_path / "other-pack", PIECE)
    with pytest.raises(PieceUsageError, match="belong to different packs"):
        join([out, tmp_path / "other-pack" / "piece-000"], tmp_path / "joined")


def test_a_file_already_there_is_kept_and_a_wrong_one_replaced(packed, tmp_path):
    files, out, _, _ = packed
    joined = tmp_path / "joined"
    joined.mkdir()
    shutil.copyfile(files[0][0], joined / "big.whl")
    (joined / "small.whl").write_bytes(b"stale bytes")
    before = (joined / "big.whl").stat().st_mtime_ns
    os.utime(joined / "big.whl", ns=(before - 10**9, before - 10**9))

    written = join(out, joined)
    assert "big.whl" not in [p.name for p in written]
    assert (joined / "big.whl").stat().st_mtime_ns == before - 10**9  # not rewritten
    assert (joined / "small.whl").read_bytes() == files[1][0].read_bytes()
    assert join(out, joined) == []  # again: everything is in place


def test_pack_refuses_a_source_whose_sha256_differs(tmp_path):
    files = _sources(tmp_path, {"a.whl": 1500, "b.whl": 800})
    path, name, _ = files[1]
    files[1] = (path, name, "0" * 64)
    out = tmp_path / "pack"
    with pytest.raises(PieceError) as caught:
        pack(files, out, PIECE)
    assert "b.whl" in str(caught.value) and "0" * 64 in str(caught.value) and "nothing was packed" in str(caught.value)
    assert not out.exists()  # nothing half-made is left behind


def test_pack_refuses_a_folder_holding_a_pack(packed, tmp_path):
    files, out, _, _ = packed
    with pytest.raises(PieceUsageError, match="already holds a pack"):
        pack(files, out, PIECE)


@pytest.mark.parametrize("text, size", [
    ("58MiB", 58 * 1024 ** 2), ("58M", 58 * 1024 ** 2), ("58mib", 58 * 1024 ** 2), ("1GiB", 1024 ** 3),
    ("1.5G", 3 * 1024 ** 3 // 2), ("58MB", 58_000_000), ("512K", 512 * 1024), ("60817408", 60817408),
    (" 700 ", 700), ("100B", 100),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "58XB", "-5", "0", "1.5", "M", "58 MiB extra"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(PieceUsageError):
        parse_size(text)


def test_pieces_module_uses_the_standard_library_only():
    tree = ast.parse((PROJECT_ROOT / "fm9g_deploy" / "artifacts" / "pieces.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == set()
    for package in ("fm9g_deploy/__init__.py", "fm9g_deploy/artifacts/__init__.py"):
        assert not [n for n in ast.walk(ast.parse((PROJECT_ROOT / package).read_text()))
                    if isinstance(n, (ast.Import, ast.ImportFrom))], f"{package} must import nothing"


def _host_join(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    """`python3 -m fm9g_deploy.artifacts.pieces` as on a bare host: an empty environment, no site-packages
    (-S), only the project's source tree on the path."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-S", "-m", "fm9g_deploy.artifacts.pieces", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_join_command_needs_no_third_party_package(packed, tmp_path):
    files, out, _, _ = packed
    ok = _host_join("join", "--out", str(tmp_path / "joined"), str(out))
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert sum(line.startswith("written  ") for line in lines) == len(files)
    assert lines[-1].startswith(f"{tmp_path / 'joined'}: {len(files)} files") and "5 written, 0 kept" in lines[-1]
    for path, name, _ in files:
        assert (tmp_path / "joined" / name).read_bytes() == path.read_bytes()

    again = _host_join("join", "--out", str(tmp_path / "joined"), *map(str, _pieces(out)))
    assert again.returncode == 0 and "0 written, 5 kept" in again.stdout

    shutil.rmtree(out / "piece-000")
    missing = _host_join("join", "--out", str(tmp_path / "other"), str(out))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "piece-000 is missing" in missing.stderr and "Traceback" not in missing.stderr

    usage = _host_join("join", "--out", str(tmp_path / "other"), str(tmp_path / "nowhere"))
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "is not a folder" in usage.stderr
    assert _host_join("join", str(out)).returncode == 2  # --out is required


# -- `fm9g-deploy artifacts pack` ------------------------------------------------------------------


def _lock_and_cache(tmp_path: Path, cached: bool = True) -> tuple[Path, Path, dict[str, Path]]:
    wheels = {name: make_wheel(tmp_path / "wheels", name, version, payload="x" * pad)
              for name, version, pad in [("fm9g-app", "1.0", 900), ("Nvidia_Cublas_CU12", "12.1", 10),
                                         ("torch", "2.3.0", 10), ("fm9g-dep", "2.0", 1500)]}
    artifacts = [LockedArtifact(name=name, version=version, filename=wheels[name].name, sha256=sha256_of(wheels[name]),
                                size=wheels[name].stat().st_size, kind="wheel", sets=["base"],
                                url=f"http://127.0.0.1:9/{wheels[name].name}")
                 for name, version in [("fm9g-app", "1.0"), ("Nvidia_Cublas_CU12", "12.1"), ("torch", "2.3.0"),
                                       ("fm9g-dep", "2.0")]]
    lock = Lock(profile="cpu", generated_by="test", index_url="http://127.0.0.1:9/simple",
                target=LockTarget(python="3.11", abi="cp311", platforms=["manylinux_2_36_x86_64"], markers={}),
                requirements=["fm9g-app"], sets={"base": "test"}, artifacts=artifacts)
    lock_file = tmp_path / "lock.json"
    lock_file.write_text(lock_text(lock))
    cache = Cache(tmp_path / "cache")
    if cached:
        for path in wheels.values():
            cache.store(path, sha256_of(path), path.name)
    return lock_file, cache.root, wheels


def test_cli_pack_skips_what_the_host_has_and_joins_back(tmp_path, capsys):
    lock_file, cache_dir, wheels = _lock_and_cache(tmp_path)
    out = tmp_path / "pieces"
    code = cli_main(["artifacts", "pack", "--profile", "cpu", "--lock", str(lock_file), "--cache-dir", str(cache_dir),
                     "--out", str(out), "--piece-size", "700", "--skip", "nvidia-*", "--skip", "TORCH"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [wheels["fm9g-app"].name, wheels["fm9g-dep"].name,
                                                      "requirements.txt"]
    assert manifest["meta"]["skipped"] == ["Nvidia_Cublas_CU12", "torch"]
    assert len(manifest["pieces"]) > 2 and all(p["size"] <= 700 for p in manifest["pieces"])
    requirements = (out / "requirements.txt").read_text()
    assert "fm9g-app==1.0\nfm9g-dep==2.0\n" in requirements and "torch==" not in requirements
    assert "next steps" in captured.out and "python3 -m fm9g_deploy.artifacts.pieces join --out" in captured.out
    assert "pip install --no-index --no-deps" in captured.out

    joined = tmp_path / "joined"
    written = join(out, joined)
    assert sorted(p.name for p in written) == sorted([wheels["fm9g-app"].name, wheels["fm9g-dep"].name,
                                                      "requirements.txt"])
    assert (joined / wheels["fm9g-dep"].name).read_bytes() == wheels["fm9g-dep"].read_bytes()
    assert (joined / "requirements.txt").read_text() == requirements


def test_cli_pack_bad_piece_size_is_one_line(tmp_path, capsys):
    lock_file, cache_dir, _ = _lock_and_cache(tmp_path)
    code = cli_main(["artifacts", "pack", "--profile", "cpu", "--lock", str(lock_file), "--cache-dir", str(cache_dir),
                     "--out", str(tmp_path / "pieces"), "--piece-size", "58 parsecs"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith("fm9g-deploy: error: --piece-size ")
    assert not (tmp_path / "pieces").exists()


def test_cli_pack_without_the_files_in_the_cache_says_to_fetch(tmp_path, capsys):
    lock_file, cache_dir, wheels = _lock_and_cache(tmp_path, cached=False)
    args = ["artifacts", "pack", "--profile", "cpu", "--lock", str(lock_file), "--cache-dir", str(cache_dir),
            "--out", str(tmp_path / "pieces"), "--skip", "nvidia-*", "torch"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "artifacts fetch --profile cpu" in err and "--fetch" in err
    assert not (tmp_path / "pieces").exists()

    # --fetch brings in only the selected files (here from a local folder with the right hashes).
    assert cli_main(args + ["--fetch", "--from", str(tmp_path / "wheels")]) == 0, capsys.readouterr().err
    stored = sorted(path.name for _, path in Cache(cache_dir).stored_files())
    assert stored == sorted([wheels["fm9g-app"].name, wheels["fm9g-dep"].name])


def test_cli_pack_refuses_a_damaged_cache_file_and_a_used_folder(tmp_path, capsys):
    lock_file, cache_dir, wheels = _lock_and_cache(tmp_path)
    base = ["artifacts", "pack", "--profile", "cpu", "--lock", str(lock_file), "--cache-dir", str(cache_dir)]
    damaged = Cache(cache_dir).path_for(sha256_of(wheels["fm9g-dep"]), wheels["fm9g-dep"].name)
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    assert cli_main(base + ["--out", str(tmp_path / "pieces")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("fm9g-deploy: failed: fm9g_dep-2.0") and "artifacts verify" in err
    assert not (tmp_path / "pieces").exists() or not any((tmp_path / "pieces").iterdir())

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("x")
    assert cli_main(base + ["--out", str(tmp_path / "used")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_cli_pack_help_explains_the_host_side(capsys):
    with pytest.raises(SystemExit):
        cli_main(["artifacts", "pack", "--help"])
    out = capsys.readouterr().out
    assert "python3 -m fm9g_deploy.artifacts.pieces join" in out and "--piece-size" in out and "--skip" in out


def test_stream_bytes_are_the_files_in_order(packed):
    files, out, _, _ = packed
    stream = b"".join((folder / "data").read_bytes() for folder in _pieces(out))
    assert hashlib.sha256(stream).hexdigest() == hashlib.sha256(
        b"".join(path.read_bytes() for path, _, _ in files)).hexdigest()
