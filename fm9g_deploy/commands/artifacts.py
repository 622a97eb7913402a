"""`fm9g-deploy artifacts lock|fetch|add|verify|serve|pack`: the locked files and the mirror hosts use."""

from __future__ import annotations

import argparse
from pathlib import Path

from fm9g_deploy.commands.common import add_config_arg

HELP = """\
Hosts never download from the internet: the control node locks each stack profile to exact
files (sha256), fetches them into a content-addressed cache, and serves that cache as a mirror.

  artifacts lock  --profile cpu        resolve the profile into locks/cpu.json (needs the index,
                                       and conda-forge for a conda profile's env packages)
  artifacts add   FILE --family F      register the FM9G vLLM wheel you downloaded (cuda121)
  artifacts fetch --profile cpu        download every locked file into the cache (resumable)
  artifacts verify                     re-hash the cache
  artifacts serve                      serve the cache over HTTP
  artifacts pack  --profile cpu ...    cut the locked files into pieces for an air-gapped host

After a fetch the cache holds published/<profile>/requirements.txt and index.html, for
`pip install --no-index --no-deps --require-hashes --find-links URL/ -r URL/requirements.txt`.
"""

DEFAULT_PIECE_SIZE = "58MiB"

PACK_HELP = """\
Carry a profile's locked Python files to a host that can only receive folders of a limited size.
The files of one install set (less --skip) are taken from the cache, re-hashed, written as one
stream and cut into pieces, each in its own folder with a copy of the manifest (every file's and
every piece's size and sha256):

  DIR/piece-000/data  DIR/piece-000/manifest.json  DIR/piece-001/...  DIR/manifest.json
  DIR/requirements.txt  (name==version of the packed files; also carried inside the pieces)

Then carry each piece folder to the host, and there (Python 3.8+ and this project's fm9g_deploy
folder, nothing else) check the pieces and write the files:

  python3 -m fm9g_deploy.artifacts.pieces join --out WHEELS PIECES...
  python3 -m pip install --no-index --no-deps WHEELS/*.whl

PIECES: the piece folders, or the folder holding them. join exits 1 naming a missing or corrupt
piece and writes nothing then; files already in WHEELS with the right sha256 are kept.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("artifacts", help="lock, fetch, verify, serve and pack the files hosts install",
                                   description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="artifacts_action", metavar="ACTION", required=True)

    lock = actions.add_parser(
        "lock", help="resolve a stack profile into a lock of exact files with sha256",
        description="Resolve a stack profile with pip's resolver for the hosts' Python and platform, and "
                    "write the lock (default: locks/<profile>.json). Needs the package index. Registered "
                    "vLLM wheels (artifacts add) are resolved in, one install set per family. A profile "
                    "with a conda section also locks its env's conda packages: the locked Miniforge "
                    "installer (fetched into the cache if absent) is installed into a scratch directory "
                    "and its conda lists what `conda create` would link, so this machine must reach the "
                    "conda channel (hosts never do).")
    _add_profile(lock)
    lock.add_argument("--output", type=Path, metavar="FILE",
                      help="where to write the lock (default: locks/<profile>.json)")
    lock.add_argument("--index-url", metavar="URL", help="package index to resolve from (default: the profile's, PyPI)")
    _add_from(lock)
    _add_cache_args(lock)
    lock.set_defaults(handler=run_lock)

    fetch = actions.add_parser(
        "fetch", help="download every file of a lock (and a model's tarball) into the cache",
        description="Bring every file of the profile's lock into the cache: files already there are "
                    "skipped, files in a --from directory (or pip's find-links) with the right sha256 are "
                    "copied, the rest are downloaded with resume and checked against the lock (a mirror's "
                    "5xx, a dropped connection or a stall is retried, 4 tries in all; a file that fails its "
                    "sha256 is never kept). A model's "
                    "tarball has no published checksum: its first download is pinned, later ones must match. "
                    "Ends by publishing the profile's pip view in the cache.")
    _add_profile(fetch)
    fetch.add_argument("--model", metavar="MODEL", help="also fetch this catalog model's tarball (e.g. fm9g-4b)")
    fetch.add_argument("--lock", type=Path, metavar="FILE", help="lock to fetch (default: locks/<profile>.json)")
    _add_from(fetch)
    fetch.add_argument("--jobs", type=int, default=4, metavar="N", help="parallel downloads (default: 4)")
    fetch.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="give up on a download after this long without data (default: 60)")
    _add_cache_args(fetch)
    fetch.set_defaults(handler=run_fetch)

    add = actions.add_parser(
        "add", help="put a file you brought into the cache (FM9G vLLM wheel, model tarball)",
        description="Register a file that cannot be downloaded by URL. The FM9G vLLM wheels of the "
                    "4B/7B/70B and 2B/8B families share one file name: say which family this one is; "
                    "they are told apart by sha256. Run `artifacts lock` afterwards to lock it.")
    add.add_argument("file", type=Path, metavar="FILE", help="the file to add")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--family", metavar="FAMILY",
                      help="the vLLM wheel's model family: fm9g-4b-7b-70b or fm9g-2b-8b")
    what.add_argument("--model", metavar="MODEL", help="the catalog model this tarball holds (e.g. fm9g-7b)")
    add.add_argument("--replace", action="store_true",
                     help="register this wheel even though another one is registered for the family")
    _add_cache_args(add)
    add.set_defaults(handler=run_add)

    verify = actions.add_parser(
        "verify", help="re-hash the cache against its hashes, the lock and the model pins",
        description="Re-hash every file in the cache and check it against the hash it is stored under; "
                    "with --profile, also report locked files that are missing. Exit 1 on any problem.")
    verify.add_argument("--profile", action="append", metavar="PROFILE",
                        help="also check that this profile's lock is complete (repeatable)")
    verify.add_argument("--delete-corrupt", action="store_true",
                        help="delete files whose bytes do not match their hash (fetch brings them back)")
    _add_cache_args(verify)
    verify.set_defaults(handler=run_verify)

    serve = actions.add_parser(
        "serve", help="serve the cache to hosts over HTTP (with Range support)",
        description="Serve the cache directory over HTTP (GET/HEAD, byte ranges) until interrupted. "
                    "Hosts install from URL/published/<profile>/.")
    serve.add_argument("--bind", default="127.0.0.1:8080", metavar="HOST:PORT",
                       help="address to listen on (default: 127.0.0.1:8080)")
    serve.add_argument("--quiet", action="store_true", help="do not log each request")
    _add_cache_args(serve)
    serve.set_defaults(handler=run_serve)

    pack = actions.add_parser(
        "pack", help="cut a profile's locked files into pieces of a bounded size, for an air-gapped host",
        description=PACK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_profile(pack)
    pack.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="new or empty folder for the pieces (DIR/piece-NNN/), DIR/manifest.json and "
                           "DIR/requirements.txt")
    pack.add_argument("--piece-size", default=DEFAULT_PIECE_SIZE, metavar="SIZE",
                      help="largest piece, e.g. 58MiB, 58M, 1GiB or plain bytes; K/M/G are powers of 1024, "
                           f"KB/MB/GB powers of 1000 (default: {DEFAULT_PIECE_SIZE})")
    pack.add_argument("--skip", action="extend", nargs="+", default=[], metavar="PATTERN",
                      help="leave out packages the host already has: a glob on the package name, lower-case "
                           "with '-' (e.g. 'nvidia-*' torch triton); repeatable")
    pack.add_argument("--only-set", metavar="SET",
                      help="pack this install set of the lock (default: base; a vLLM wheel family's set "
                           "holds base plus that wheel)")
    pack.add_argument("--lock", type=Path, metavar="FILE", help="lock to pack (default: locks/<profile>.json)")
    pack.add_argument("--fetch", action="store_true",
                      help="download the selected files that are not in the cache yet (only those), "
                           "as `artifacts fetch` does")
    pack.add_argument("--from", dest="from_dirs", action="append", type=Path, metavar="DIR",
                      help="with --fetch: look for files in this directory first (repeatable; pip's find-links "
                           "dirs are searched too); a file is used only if its sha256 matches")
    _add_cache_args(pack)
    pack.set_defaults(handler=run_pack)


def _add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, metavar="PROFILE", help="stack profile: cpu, cuda121 or cuda130")


def _add_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_dirs", action="append", type=Path, metavar="DIR",
                        help="look for files in this directory first (repeatable; pip's find-links dirs "
                             "are searched too); a file is used only if its sha256 matches")


def _add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="the artifact cache (default: mirror.cache_dir of the config, else "
                             "$FM9G_DEPLOY_CACHE_DIR or ~/.cache/fm9g-deploy)")
    add_config_arg(parser)


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _cache(args: argparse.Namespace):
    from fm9g_deploy.artifacts.cache import Cache, resolve_cache_dir

    cache = Cache(resolve_cache_dir(args.cache_dir, args.config))
    cache.require_directory()  # before any work: a file given as the cache fails every path under it
    return cache


def run_lock(args: argparse.Namespace) -> int:
    from fm9g_deploy.artifacts.pieces import describe_size
    from fm9g_deploy.artifacts.lock import lock_path, lock_text, write_lock
    from fm9g_deploy.artifacts.resolve import build_lock
    from fm9g_deploy.artifacts.sources import search_dirs
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.profiles import load_profile

    profile = load_profile(args.profile)
    path = args.output or lock_path(profile.name)
    if path.is_dir():
        raise UserError(f"--output {path} is a directory; pass the path of the lock file to write")
    console = _console()
    lock = build_lock(profile, _cache(args), search=search_dirs(args.from_dirs), index_url=args.index_url,
                      on_step=lambda message: console.print(f"  {message}"))
    # Compared as bytes: an old lock that is not UTF-8 is simply different, and gets replaced.
    try:
        before = path.read_bytes()
    except OSError:
        before = None
    text = lock_text(lock)
    if text.encode("utf-8") != before:
        try:
            write_lock(lock, path)
        except OSError as exc:
            raise UserError(f"cannot write the lock {path}: {exc.strerror or exc}; pass a writable --output "
                            "path") from None
    for name, stand_in in lock.stand_ins.items():
        console.print(f"  note: {name} resolved as {stand_in} (same dependencies); the lock holds the pinned file")
    for family in lock.unregistered_families:
        console.print(f"  note: no vLLM wheel registered for {family}; `fm9g-deploy artifacts add FILE "
                      f"--family {family}`, then lock again")
    known = [a.size for a in lock.artifacts if a.size is not None]
    unknown = len(lock.artifacts) - len(known)
    size = describe_size(sum(known)) + (f" + {unknown} of unknown size" if unknown else "")
    state = "unchanged" if text.encode("utf-8") == before else "written"
    print(f"{path}: {len(lock.artifacts)} files ({size}), sets: {', '.join(lock.sets)} ({state})")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from fm9g_deploy.artifacts.download import Timeouts
    from fm9g_deploy.artifacts.fetch import fetch, plan
    from fm9g_deploy.artifacts.pieces import describe_size
    from fm9g_deploy.artifacts.lock import load_lock
    from fm9g_deploy.artifacts.publish import publish
    from fm9g_deploy.artifacts.sources import search_dirs
    from fm9g_deploy.errors import OperationFailed, UserError
    from fm9g_deploy.profiles import load_profile

    if args.jobs < 1 or args.timeout <= 0:
        raise UserError("--jobs must be at least 1 and --timeout more than 0")
    profile = load_profile(args.profile)
    lock = load_lock(profile.name, args.lock)
    cache = _cache(args)
    console = _console()
    items, warnings, problems = plan(lock, cache, args.model)
    for line in warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    report = fetch(items, cache, search=search_dirs(args.from_dirs), jobs=args.jobs,
                   timeouts=Timeouts(connect=min(args.timeout, 30.0), read=args.timeout), console=console)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    for line in problems:
        console.print(f"[red]error:[/] {escape(line)}")
    written, skipped = publish(lock, cache)
    for folder in written:
        console.print(f"published {folder / 'requirements.txt'}")
    for set_name in skipped:
        console.print(f"not published: install set {set_name} (some of its files are not in the cache)")
    print(f"{profile.name}: {report.total} files in {cache.root}: {len(report.downloaded)} downloaded "
          f"({describe_size(report.downloaded_bytes)}), {len(report.copied)} copied from local directories, "
          f"{len(report.present)} already there, {len(report.failures)} failed")
    failures = report.failures + problems
    if len(failures) == 1:
        raise OperationFailed(failures[0])
    if failures:
        raise OperationFailed(f"{len(failures)} files could not be fetched (each is listed above); "
                              "run fetch again to resume")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from fm9g_deploy.artifacts.add import add_model_tarball, add_operator_wheel

    cache = _cache(args)
    if args.family:
        added = add_operator_wheel(cache, args.file, args.family, replace=args.replace)
        what = f"the {args.family} vLLM wheel"
    else:
        added = add_model_tarball(cache, args.file, args.model)
        what = f"the {args.model} tarball"
    console = _console()
    for note in added.notes:
        console.print(f"  {escape(note)}")
    print(f"added {what}: {added.path} (sha256 {added.sha256})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from fm9g_deploy.artifacts.pieces import describe_size
    from fm9g_deploy.artifacts.lock import load_lock
    from fm9g_deploy.artifacts.verify import verify
    from fm9g_deploy.errors import OperationFailed

    cache = _cache(args)
    cache.require_existing()
    locks = [load_lock(name) for name in args.profile or []]
    console = _console()
    report = _verify_with_progress(cache, locks, console, verify)
    for bad in report.corrupt:
        action = "deleted" if args.delete_corrupt else "delete it and fetch again"
        if args.delete_corrupt:
            bad.path.unlink(missing_ok=True)
        console.print(f"[red]CORRUPT[/] {escape(str(bad.path))}: sha256 is {bad.actual}; {action}")
    for line in report.missing:
        console.print(f"[yellow]missing[/] {escape(line)}")
    print(f"{cache.root}: {report.checked} files re-hashed ({describe_size(report.checked_bytes)}), "
          f"{len(report.corrupt)} corrupt, {len(report.missing)} missing")
    if not report.ok:
        raise OperationFailed(f"the cache has {len(report.corrupt)} corrupt and {len(report.missing)} missing "
                              "files (listed above)")
    return 0


def _verify_with_progress(cache, locks, console, verify):
    if not console.is_terminal:
        return verify(cache, locks)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    total = sum(path.stat().st_size for _, path in cache.stored_files())
    with Progress(TextColumn("hashing"), BarColumn(), DownloadColumn(), console=console, transient=True) as bar:
        task = bar.add_task("hashing", total=total)
        return verify(cache, locks, on_bytes=lambda n: bar.advance(task, n))


def run_serve(args: argparse.Namespace) -> int:
    from fm9g_deploy.artifacts.serve import make_server, parse_bind
    from fm9g_deploy.errors import UserError

    try:
        host, port = parse_bind(args.bind)
    except ValueError:
        raise UserError(f"--bind {args.bind!r} is not HOST:PORT (e.g. 127.0.0.1:8080)") from None
    cache = _cache(args)
    if not cache.root.is_dir():
        raise UserError(f"the cache {cache.root} does not exist; run `fm9g-deploy artifacts fetch` first")
    try:
        server = make_server(cache.root, host, port, quiet=args.quiet)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --bind") from None
    bound_host, bound_port = server.server_address[:2]
    print(f"serving {cache.root} at http://{bound_host}:{bound_port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _split_skipped(files: list, patterns: list[str]) -> tuple[list, list, list[str]]:
    """(files to pack, files skipped, patterns that matched nothing) for --skip globs."""
    from fnmatch import fnmatchcase

    from fm9g_deploy.artifacts.resolve import canonical

    globs = [(pattern, canonical(pattern)) for pattern in patterns]
    kept, skipped, used = [], [], set()
    for artifact in files:
        hits = [pattern for pattern, glob in globs if fnmatchcase(canonical(artifact.name), glob)]
        used.update(hits)
        (skipped if hits else kept).append(artifact)
    return kept, skipped, [pattern for pattern in patterns if pattern not in used]


def _fetch_missing(missing: list, cache, args: argparse.Namespace, console) -> None:
    from rich.markup import escape

    from fm9g_deploy.artifacts.fetch import FetchItem, fetch
    from fm9g_deploy.artifacts.sources import search_dirs
    from fm9g_deploy.errors import OperationFailed, UserError

    for artifact in missing:
        if artifact.url is None:
            raise UserError(f"{artifact.filename} ({artifact.family}) is not in the cache and has no URL; register "
                            f"it with `fm9g-deploy artifacts add FILE --family {artifact.family}`")
    items = [FetchItem(filename=a.filename, urls=(a.url,), sha256=a.sha256, size=a.size) for a in missing]
    report = fetch(items, cache, search=search_dirs(args.from_dirs), console=console)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    if len(report.failures) == 1:
        raise OperationFailed(report.failures[0])
    if report.failures:
        raise OperationFailed(f"{len(report.failures)} files could not be fetched (each is listed above); run "
                              "pack again to resume")


def _requirements_text(lock, set_name: str, files: list, skipped: list) -> str:
    lines = [f"# fm9g-deploy artifacts pack: profile {lock.profile}, install set {set_name}, "
             f"Python {lock.target.python}, {len(files)} files"]
    if skipped:
        lines.append(f"# left out (the host has them): {', '.join(a.name for a in skipped)}")
    lines.append("# install with: python3 -m pip install --no-index --no-deps WHEELS/*.whl")
    lines += [f"{artifact.name}=={artifact.version}" for artifact in files]
    return "\n".join(lines) + "\n"


def run_pack(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from fm9g_deploy import __version__
    from fm9g_deploy.artifacts.cache import sha256_file
    from fm9g_deploy.artifacts.lock import BASE_SET, load_lock
    from fm9g_deploy.artifacts.pieces import (JOIN_COMMAND, PieceError, PieceUsageError, describe_size, pack,
                                              parse_size)
    from fm9g_deploy.errors import OperationFailed, UserError

    try:
        piece_bytes = parse_size(args.piece_size)
    except PieceUsageError as exc:
        raise UserError(f"--piece-size {exc}") from None
    if args.from_dirs and not args.fetch:
        raise UserError("--from only says where --fetch looks first; add --fetch, or leave --from out")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} is not an empty folder; pick a new folder for the pieces")
    lock = load_lock(args.profile, args.lock)
    set_name = args.only_set or BASE_SET
    files, skipped, unused = _split_skipped(lock.python_files(set_name), args.skip)
    console = _console()
    for pattern in unused:
        console.print(f"[yellow]warning:[/] --skip {escape(pattern)} matches no package of install set "
                      f"{escape(set_name)}")
    if not files:
        raise UserError(f"--skip leaves none of the {len(skipped)} files of install set {set_name} to pack")

    cache = _cache(args)
    missing = [a for a in files if not cache.has(a.sha256, a.filename, a.size)]
    if missing and args.fetch:
        _fetch_missing(missing, cache, args, console)
        missing = [a for a in files if not cache.has(a.sha256, a.filename, a.size)]
    if missing:
        count = f"all {len(files)}" if len(missing) == len(files) else f"{len(missing)} of the {len(files)}"
        raise UserError(f"{count} files to pack are not in the cache {cache.root} "
                        f"(e.g. {missing[0].filename}); run `fm9g-deploy artifacts fetch --profile {lock.profile}`, "
                        "or pack with --fetch to download only these")

    out.mkdir(parents=True, exist_ok=True)
    requirements = out / "requirements.txt"
    requirements.write_text(_requirements_text(lock, set_name, files, skipped), encoding="utf-8")
    sources = [(cache.path_for(a.sha256, a.filename), a.filename, a.sha256) for a in files]
    sources.append((requirements, requirements.name, sha256_file(requirements)))
    meta = {"created_by": f"fm9g-deploy {__version__}", "profile": lock.profile, "install_set": set_name,
            "python": lock.target.python, "skipped": [a.name for a in skipped]}
    total = sum(a.size or 0 for a in files)
    console.print(f"packing {len(files)} files ({describe_size(total)}) of {lock.profile}/{set_name} into pieces "
                  f"of at most {describe_size(piece_bytes)}")
    try:
        manifest = pack(sources, out, piece_bytes, on_step=lambda line: console.print(f"  {escape(line)}"),
                        meta=meta)
    except PieceUsageError as exc:
        requirements.unlink(missing_ok=True)
        raise UserError(str(exc)) from None
    except PieceError as exc:
        requirements.unlink(missing_ok=True)
        raise OperationFailed(f"{exc}; run `fm9g-deploy artifacts verify --delete-corrupt`, then `fm9g-deploy "
                              f"artifacts fetch --profile {lock.profile}`") from None
    except BaseException:
        requirements.unlink(missing_ok=True)
        raise

    folders = [piece["folder"] for piece in manifest["pieces"]]
    span = folders[0] if len(folders) == 1 else f"{folders[0]} … {folders[-1]}"
    print(f"{out}: {len(files)} files and requirements.txt ({describe_size(manifest['total_size'])}) of "
          f"{lock.profile}/{set_name} in "
          f"{len(folders)} pieces of at most {describe_size(piece_bytes)} ({span})")
    if skipped:
        print(f"left out (--skip, the host has them): {len(skipped)} packages: "
              f"{', '.join(a.name for a in skipped)}")
    print("next steps:")
    print(f"  1. carry each piece folder ({span}) to the host, one folder per transfer; each holds its data and "
          "the manifest")
    print("  2. on the host, from the folder holding this project's fm9g_deploy/ (Python 3.8+, nothing else):")
    print(f"       {JOIN_COMMAND} --out WHEELS PIECES")
    print("     (PIECES: the folder holding the piece folders, or the piece folders themselves; it names any "
          "piece that is missing or corrupt)")
    print("  3. python3 -m pip install --no-index --no-deps WHEELS/*.whl")
    return 0
