"""Carry files to an air-gapped host in pieces of a bounded size; join them there, sha256-checked.

Some hosts can only receive files through a channel that moves one folder of limited size per
transfer. `pack` concatenates files into one stream and cuts it into pieces, each in its own folder:

    <out>/manifest.json         format version, every file (name, size, sha256, offset in the
                                stream), every piece (folder, size, sha256), the total size
    <out>/piece-000/data        bytes [0, piece size) of the stream
    <out>/piece-000/manifest.json   a copy of the manifest: any one piece knows the whole set
    <out>/piece-001/...

On the host, `join` checks that every piece is there with its size and sha256, then writes each
file, hashing it as it is written; a file lands under its name only once its hash matched.

This module uses the standard library only and runs on Python 3.8+, so the host needs nothing
but this source tree:

    python3 -m fm9g_deploy.artifacts.pieces join --out DIR PIECE_FOLDER... (or the folder holding them)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

FORMAT = "fm9g-deploy-pieces"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PIECE_DATA = "data"
PIECE_PREFIX = "piece-"
#: More pieces than this is a mistake in the piece size, not a plan.
MAX_PIECES = 10000
CHUNK = 1024 * 1024
JOIN_COMMAND = "python3 -m fm9g_deploy.artifacts.pieces join"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2,
    "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3,
    "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4,
}

Step = Optional[Callable[[str], None]]


class PieceError(Exception):
    """A check failed (a damaged source, a missing or corrupt piece): one line, exit code 1."""

    exit_code = 1


class PieceUsageError(PieceError):
    """The caller asked for something that cannot be done as asked (bad folder, bad size): exit code 2."""

    exit_code = 2


# -- sizes ---------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes in ``text``: plain bytes, or a number with K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024)
    or KB/MB/GB/TB (powers of 1000), e.g. ``58MiB``, ``58M``, ``1GiB``, ``60000000``."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or (unit in ("", "b") and "." in match.group(1)):
        raise PieceUsageError(f"{text!r} is not a size; write bytes or a number with a unit, e.g. 58MiB, "
                              "58M, 1GiB (K/M/G are powers of 1024, KB/MB/GB powers of 1000)")
    number = match.group(1)
    value = int(float(number) * _UNITS[unit]) if "." in number else int(number) * _UNITS[unit]
    if value < 1:
        raise PieceUsageError(f"{text!r} is not a usable size: it must be at least 1 byte")
    return value


def describe_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not name.startswith("."))


def _say(on_step: Step, message: str) -> None:
    if on_step is not None:
        on_step(message)


# -- pack ----------------------------------------------------------------------------------------


class _PieceWriter:
    """Writes the stream into piece folders, starting a new one every ``piece_bytes``."""

    def __init__(self, out_dir: Path, piece_bytes: int, count: int, on_step: Step):
        self.out_dir = out_dir
        self.piece_bytes = piece_bytes
        self.width = max(3, len(str(count - 1)))
        self.on_step = on_step
        self.pieces: List[dict] = []
        self.created: List[Path] = []
        self._handle = None
        self._digest = None
        self._written = 0

    def _open(self) -> None:
        folder = self.out_dir / f"{PIECE_PREFIX}{len(self.pieces):0{self.width}d}"
        folder.mkdir()
        self.created.append(folder)
        self._handle = (folder / PIECE_DATA).open("wb")
        self._digest = hashlib.sha256()
        self._written = 0
        self.pieces.append({"folder": folder.name, "offset": sum(p["size"] for p in self.pieces), "size": 0,
                            "sha256": ""})

    def _close(self) -> None:
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        piece = self.pieces[-1]
        piece["size"] = self._written
        piece["sha256"] = self._digest.hexdigest()
        _say(self.on_step, f"{piece['folder']}: {describe_size(piece['size'])} (sha256 {piece['sha256'][:16]}…)")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._handle is None or self._written == self.piece_bytes:
                self._close()
                self._open()
            room = self.piece_bytes - self._written
            part = view[:room]
            self._handle.write(part)
            self._digest.update(part)
            self._written += len(part)
            view = view[len(part):]

    def start_empty(self) -> None:
        self._open()

    def finish(self) -> List[dict]:
        self._close()
        return self.pieces

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for folder in self.created:
            shutil.rmtree(folder, ignore_errors=True)


def pack(files: Sequence[Tuple[Union[str, Path], str, str]], out_dir: Union[str, Path], piece_bytes: int,
         on_step: Step = None, meta: Optional[dict] = None) -> dict:
    """Pack ``files`` ((path, filename, sha256), in this order) into pieces of at most ``piece_bytes``.

    Each source is re-hashed while it is packed; PieceError if one does not match its sha256 (nothing
    is left behind then). ``out_dir`` may exist but must not hold a pack already. ``meta`` (a JSON
    object) is recorded in the manifest as-is. Returns the manifest.
    """
    out_dir = Path(out_dir)
    if not isinstance(piece_bytes, int) or piece_bytes < 1:
        raise PieceUsageError(f"the piece size must be a whole number of bytes above 0, not {piece_bytes!r}")
    if not files:
        raise PieceUsageError("nothing to pack: the list of files is empty")
    entries = []
    offset = 0
    for path, filename, sha256 in files:
        path = Path(path)
        if not _plain_name(filename):
            raise PieceUsageError(f"{filename!r} is not a plain file name; it cannot be joined on the host")
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise PieceUsageError(f"{filename}: {sha256!r} is not a sha256 (64 lower-case hex digits)")
        if any(entry["name"] == filename for entry in entries):
            raise PieceUsageError(f"{filename} is listed twice; two files of one pack need two names")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise PieceUsageError(f"{filename}: cannot read {path} ({exc.strerror or exc})") from None
        if not path.is_file():
            raise PieceUsageError(f"{filename}: {path} is not a file")
        entries.append({"name": filename, "size": size, "sha256": sha256, "offset": offset, "path": path})
        offset += size
    total = offset
    count = max(1, -(-total // piece_bytes))
    if count > MAX_PIECES:
        raise PieceUsageError(f"{describe_size(total)} in pieces of {describe_size(piece_bytes)} makes {count} "
                              f"pieces (at most {MAX_PIECES}); pick a larger piece size")
    if out_dir.exists() and not out_dir.is_dir():
        raise PieceUsageError(f"{out_dir} is not a folder; pick another output folder")
    if out_dir.is_dir():
        taken = [p.name for p in out_dir.iterdir() if p.name == MANIFEST or p.name.startswith(PIECE_PREFIX)]
        if taken:
            raise PieceUsageError(f"{out_dir} already holds a pack ({', '.join(sorted(taken)[:3])}); pick a new "
                                  "output folder or empty this one")
    created_out = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)

    writer = _PieceWriter(out_dir, piece_bytes, count, on_step)
    try:
        for entry in entries:
            digest = hashlib.sha256()
            read = 0
            with entry["path"].open("rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(chunk)
                    read += len(chunk)
                    writer.write(chunk)
            if read != entry["size"]:
                raise PieceError(f"{entry['name']}: {entry['path']} changed while it was packed "
                                 f"({read} bytes read, {entry['size']} expected); nothing was packed")
            actual = digest.hexdigest()
            if actual != entry["sha256"]:
                raise PieceError(f"{entry['name']}: {entry['path']} hashes to sha256 {actual}, not the expected "
                                 f"{entry['sha256']}: the source is damaged; nothing was packed")
        if total == 0:
            writer.start_empty()  # an empty stream still gets its one (empty) piece
        pieces = writer.finish()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "total_size": total,
            "piece_size": piece_bytes,
            "files": [{k: entry[k] for k in ("name", "size", "sha256", "offset")} for entry in entries],
            "pieces": pieces,
            "meta": dict(meta or {}),
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        for piece in pieces:
            _write_text(out_dir / piece["folder"] / MANIFEST, text)
        _write_text(out_dir / MANIFEST, text)
    except BaseException:
        writer.abort()
        if (out_dir / MANIFEST).is_file():  # it was not there before: the check above refused that
            (out_dir / MANIFEST).unlink()
        if created_out:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return manifest


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(str(temporary), str(path))


# -- the manifest --------------------------------------------------------------------------------


def _check_manifest(data: object, where: Path) -> dict:
    """The manifest if it is whole and consistent; PieceError naming what is wrong otherwise."""

    def bad(why: str) -> PieceError:
        return PieceError(f"{where} is not a usable pieces manifest ({why}); take the manifest.json of the "
                          "packing host, or any piece folder's copy")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"its format is not {FORMAT}")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise bad("it has no format_version")
    if version > FORMAT_VERSION:
        raise PieceError(f"{where} is format {version}; this join reads format {FORMAT_VERSION} only: use the "
                         "fm9g_deploy source of the packing host")
    files, pieces, total = data.get("files"), data.get("pieces"), data.get("total_size")
    if not isinstance(files, list) or not isinstance(pieces, list) or not pieces or not isinstance(total, int):
        raise bad("files, pieces or total_size missing")
    _check_run(files, "name", "file", total, bad)
    _check_run(pieces, "folder", "piece", total, bad)
    return data


def _check_run(entries: list, key: str, kind: str, total: int, bad) -> None:
    """Entries (files, or pieces) that tile the stream: unique plain names, sizes, offsets, sha256s."""
    offset, seen = 0, set()
    for entry in entries:
        if not isinstance(entry, dict) or not _plain_name(entry.get(key)):
            raise bad(f"a {kind} entry has no plain {key}: {entry!r:.80}")
        if entry[key] in seen:
            raise bad(f"{entry[key]} is listed twice")
        seen.add(entry[key])
        if not isinstance(entry.get("size"), int) or entry["size"] < 0 or entry.get("offset") != offset:
            raise bad(f"{entry[key]}: size or offset does not add up")
        if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            raise bad(f"{entry[key]}: no sha256")
        offset += entry["size"]
    if offset != total:
        raise bad(f"the {kind}s do not add up to total_size")


def read_manifest(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PieceError(f"cannot read {path} ({str(exc).splitlines()[0]}); take another piece folder's "
                         "manifest.json") from None
    return _check_manifest(data, path)


# -- join ----------------------------------------------------------------------------------------


def _is_piece_folder(path: Path) -> bool:
    return (path / PIECE_DATA).is_file()


def _gather(sources: Iterable[Union[str, Path]]) -> Tuple[dict, Path, List[Path]]:
    """(manifest, where it was read, piece folders) from piece folders or folders holding them."""
    folders: List[Path] = []
    manifests: List[Path] = []
    for source in sources:
        source = Path(source)
        if not source.is_dir():
            raise PieceUsageError(f"{source} is not a folder; pass piece folders (piece-NNN/) or the folder "
                                  "that holds them")
        if _is_piece_folder(source):
            found = [source]
        else:
            found = sorted(child for child in source.iterdir() if child.is_dir() and _is_piece_folder(child))
            if (source / MANIFEST).is_file():
                manifests.append(source / MANIFEST)
            if not found and not (source / MANIFEST).is_file():
                raise PieceUsageError(f"{source} holds no piece folder (a folder with {PIECE_DATA} and "
                                      f"{MANIFEST}); pass piece folders or the folder that holds them")
        for folder in found:
            if folder.resolve() not in [f.resolve() for f in folders]:
                folders.append(folder)
                if (folder / MANIFEST).is_file():
                    manifests.append(folder / MANIFEST)
    if not manifests:
        raise PieceUsageError(f"none of the folders given holds a {MANIFEST}; every piece folder carries a copy: "
                              "pass the piece folders as they were packed")
    first = manifests[0]
    manifest = read_manifest(first)
    for other in manifests[1:]:
        try:
            same = json.loads(other.read_text(encoding="utf-8")) == manifest
        except (OSError, ValueError):
            same = False
        if not same:
            raise PieceUsageError(f"{other} differs from {first}: the folders given belong to different packs; "
                                  "pass the pieces of one pack only")
    return manifest, first, folders


def _verify_pieces(manifest: dict, folders: List[Path], on_step: Step) -> List[Path]:
    """The data file of every piece of the manifest, in order; PieceError naming what is missing or bad."""
    by_name: Dict[str, List[Path]] = {}
    unnamed: List[Path] = []
    known = {piece["folder"] for piece in manifest["pieces"]}
    for folder in folders:
        if folder.name in known:
            by_name.setdefault(folder.name, []).append(folder)
        else:
            unnamed.append(folder)  # renamed on the way? recognised by size and sha256 below
    sizes: Dict[Path, int] = {}
    for folder in folders:
        try:
            sizes[folder] = (folder / PIECE_DATA).stat().st_size
        except OSError:
            sizes[folder] = -1

    total = sum(piece["size"] for piece in manifest["pieces"])
    _say(on_step, f"checking {len(manifest['pieces'])} pieces ({describe_size(total)})")
    hashes: Dict[Path, str] = {}

    def digest(folder: Path) -> str:
        if folder not in hashes:
            try:
                hashes[folder] = _sha256_of(folder / PIECE_DATA)
            except OSError:
                hashes[folder] = ""
        return hashes[folder]

    missing: List[str] = []
    damaged: List[str] = []
    again: List[str] = []
    chosen: List[Path] = []
    for piece in manifest["pieces"]:
        named = by_name.get(piece["folder"], [])
        match = next((f for f in named if sizes[f] == piece["size"] and digest(f) == piece["sha256"]), None)
        if match is None:
            match = next((f for f in unnamed if sizes[f] == piece["size"] and digest(f) == piece["sha256"]), None)
        if match is not None:
            chosen.append(match / PIECE_DATA)
            continue
        again.append(piece["folder"])
        if not named:
            missing.append(piece["folder"])
            continue
        folder = named[0]
        if sizes[folder] != piece["size"]:
            damaged.append(f"{folder} has {sizes[folder]} bytes instead of {piece['size']} (cut short or grown in "
                           "transfer)")
        else:
            damaged.append(f"{folder} is corrupt (its sha256 is {digest(folder)[:16]}…, the manifest says "
                           f"{piece['sha256'][:16]}…)")
    if missing or damaged:
        count = len(manifest["pieces"])
        problems = []
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            problems.append(f"{', '.join(missing)} {verb} missing ({count - len(missing)} of {count} pieces found)")
        problems += damaged
        raise PieceError(f"{'; '.join(problems)}: nothing was written; carry {', '.join(again)} again from the "
                         "packing host and run join with every piece folder")
    return chosen


def _read_range(pieces: List[Tuple[Path, int, int]], offset: int, size: int) -> Iterator[bytes]:
    """The stream's bytes [offset, offset + size), read from the piece data files."""
    end = offset + size
    for path, start, length in pieces:
        if start + length <= offset or start >= end:
            continue
        begin = max(offset, start)
        stop = min(end, start + length)
        with path.open("rb") as handle:
            handle.seek(begin - start)
            left = stop - begin
            while left:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    raise PieceError(f"{path} ended early while it was read; carry that piece again")
                left -= len(chunk)
                yield chunk


def _already_there(target: Path, entry: dict) -> bool:
    try:
        return target.is_file() and target.stat().st_size == entry["size"] and _sha256_of(target) == entry["sha256"]
    except OSError:
        return False


def join(sources: Union[str, Path, Iterable[Union[str, Path]]], out_dir: Union[str, Path],
         on_step: Step = None) -> List[Path]:
    """Check every piece, then write each file of the pack into ``out_dir``; returns the paths written.

    ``sources``: piece folders, or a folder holding them (any mix). A file already in ``out_dir`` with
    the right sha256 is kept (and not returned). Each file is written under a temporary name, hashed as
    it is written, and renamed into place only when its sha256 matches. PieceError (one line) when a
    piece is missing or corrupt: nothing is written then.
    """
    return _join(sources, out_dir, on_step)[1]


def _join(sources, out_dir, on_step: Step) -> Tuple[dict, List[Path]]:
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out_dir = Path(out_dir)
    manifest, _, folders = _gather(sources)
    data_files = _verify_pieces(manifest, folders, on_step)
    pieces = [(path, piece["offset"], piece["size"]) for path, piece in zip(data_files, manifest["pieces"])]

    if out_dir.exists() and not out_dir.is_dir():
        raise PieceUsageError(f"{out_dir} is not a folder; pick another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PieceUsageError(f"cannot create {out_dir} ({exc.strerror or exc}); pick another --out") from None
    todo = []
    for entry in manifest["files"]:
        if _already_there(out_dir / entry["name"], entry):
            _say(on_step, f"kept     {entry['name']} (already there, sha256 matches)")
        else:
            todo.append(entry)
    needed = sum(entry["size"] for entry in todo)
    free = shutil.disk_usage(str(out_dir)).free
    if needed > free:
        raise PieceError(f"{out_dir} has {describe_size(free)} free, the files need {describe_size(needed)}; free "
                         "some space or pick another --out")

    written: List[Path] = []
    for entry in todo:
        target = out_dir / entry["name"]
        handle, temporary = tempfile.mkstemp(dir=str(out_dir), prefix=f".{entry['name']}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as stream:
                for chunk in _read_range(pieces, entry["offset"], entry["size"]):
                    digest.update(chunk)
                    stream.write(chunk)
                stream.flush()
                os.fsync(stream.fileno())
            actual = digest.hexdigest()
            if actual != entry["sha256"]:
                raise PieceError(f"{entry['name']}: the joined bytes hash to sha256 {actual}, not {entry['sha256']}; "
                                 "it was not written (a piece changed during join? run join again)")
            os.chmod(temporary, 0o644)
            os.replace(temporary, str(target))
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        written.append(target)
        _say(on_step, f"written  {entry['name']} ({describe_size(entry['size'])}, sha256 {entry['sha256'][:16]}…)")
    return manifest, written


# -- the command line on the host ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m fm9g_deploy.artifacts.pieces",
        description="Join the pieces `fm9g-deploy artifacts pack` made back into files, checking the sha256 "
                    "of every piece and every file. Needs Python 3.8+ and nothing else.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    joining = actions.add_parser(
        "join", help="check the pieces and write the files they carry",
        description="Check that every piece of the pack is present with the right size and sha256, then "
                    "write each file into --out (under a temporary name, renamed once its sha256 matches). "
                    "Files already in --out with the right sha256 are kept. Exit 0 when every file is in "
                    "place, 1 when a check fails (nothing bad is written), 2 on bad usage.")
    joining.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write the files")
    joining.add_argument("sources", nargs="+", type=Path, metavar="PIECE_DIR_OR_ROOT",
                         help="piece folders (piece-NNN/), or the folder that holds them")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    prog = "pieces join"
    try:
        manifest, written = _join(args.sources, args.out, on_step=lambda line: print(line, flush=True))
    except PieceError as exc:
        print(f"{prog}: {'error' if exc.exit_code == 2 else 'failed'}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}: failed:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (files not yet renamed into place were discarded)", file=sys.stderr)
        return 130
    files = manifest["files"]
    print(f"{args.out}: {len(files)} files ({describe_size(manifest['total_size'])}) from "
          f"{len(manifest['pieces'])} pieces: {len(written)} written, {len(files) - len(written)} kept; "
          "every sha256 matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
