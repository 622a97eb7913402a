"""Bring every file of a lock (and, on request, a model's tarball) into the cache.

For each file: already stored -> skipped; in a local directory with the right hash -> copied;
else downloaded (resumed, hashed while streaming) and stored only if the hash matches. Model
tarballs have no published checksum: the first download is pinned (trust on first use, with a
warning) and every later one must match the pin.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy.artifacts.cache import Cache, now_iso
from fm9g_deploy.artifacts.download import (DEFAULT_RETRIES, DownloadError, Retries, Timeouts, discard_partial,
                                             download, make_client)
from fm9g_deploy.artifacts.lock import Lock
from fm9g_deploy.artifacts.sources import find_local
from fm9g_deploy.errors import UserError

DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class FetchItem:
    filename: str
    urls: tuple[str, ...]
    #: None for a model tarball fetched for the first time (pinned once it arrives).
    sha256: str | None
    size: int | None = None
    #: Set for model tarballs: the catalog name the pin is recorded under.
    model: str | None = None


@dataclass
class FetchReport:
    present: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.present) + len(self.copied) + len(self.downloaded) + len(self.failures)


def plan(lock: Lock, cache: Cache, model: str | None = None) -> tuple[list[FetchItem], list[str], list[str]]:
    """(files to bring in, warnings, problems) for ``lock`` and optionally ``model``'s tarball."""
    items: list[FetchItem] = []
    warnings: list[str] = []
    problems: list[str] = []
    if model is not None:
        lock.set_for_model(model)  # UserError when this profile cannot serve the model yet
    for family in lock.unregistered_families:
        warnings.append(f"no vLLM wheel registered for family {family}: lock {lock.profile} cannot serve its "
                        f"models yet (`fm9g-deploy artifacts add FILE --family {family}`, then "
                        f"`fm9g-deploy artifacts lock --profile {lock.profile}`)")
    for artifact in lock.artifacts:
        if artifact.kind == "operator-wheel":
            if not cache.has(artifact.sha256, artifact.filename):
                problems.append(f"{artifact.filename} ({artifact.family}, sha256 {artifact.sha256[:12]}…) is "
                                f"locked but not in the cache; register it with `fm9g-deploy artifacts add FILE "
                                f"--family {artifact.family}`")
            continue
        items.append(FetchItem(filename=artifact.filename, urls=(artifact.url,), sha256=artifact.sha256,
                               size=artifact.size))
    if model is not None:
        items.append(model_item(model, cache))
    return items, warnings, problems


def model_item(model: str, cache: Cache) -> FetchItem:
    from fm9g_deploy.catalog import get_model

    spec = get_model(model)
    pin = cache.pins().get(model)
    if spec.generated:
        pin = _generate_model(model, cache)
    if not spec.tarball or not spec.tarball_urls:
        if pin:
            return FetchItem(filename=pin["filename"], urls=(), sha256=pin["sha256"], size=pin.get("size"), model=model)
        raise UserError(f"model {model} has no download URL in the catalog; put its tarball in the cache with "
                        f"`fm9g-deploy artifacts add FILE --model {model}`")
    if pin:
        return FetchItem(filename=pin["filename"], urls=tuple(spec.tarball_urls), sha256=pin["sha256"],
                         size=pin.get("size"), model=model)
    return FetchItem(filename=spec.tarball, urls=tuple(spec.tarball_urls), sha256=None, model=model)


def _generate_model(model: str, cache: Cache) -> dict:
    """Build a model fm9g-deploy makes itself (deterministic bytes, well under a second) into the cache.

    Its pin follows this code: a release of fm9g-deploy that changes the model's shape or config
    gives it a new sha256, and hosts then install the new release.
    """
    import tempfile

    from fm9g_deploy.tinymodel import write_tiny_tarball

    pin = cache.pins().get(model)
    with tempfile.TemporaryDirectory(prefix="fm9g-model-") as folder:
        built = write_tiny_tarball(Path(folder), name=model)
        if pin and pin["sha256"] == built.sha256 and cache.has(pin["sha256"], pin["filename"]):
            return pin
        cache.store(built.path, built.sha256, built.path.name)
        pin = {"filename": built.path.name, "sha256": built.sha256, "size": built.size,
               "source": "generated by fm9g-deploy", "pinned_at": now_iso()}
        cache.save_pin(model, pin)
    return pin


def pin_warning(model: str, filename: str, sha256: str) -> str:
    return (f"{filename} ({model}) has no published checksum: pinned sha256 {sha256} on first download "
            "(trust on first use); every later fetch must match it. Compare it with a copy you trust.")


class _Progress:
    """A rich progress display on a terminal; one line per finished file elsewhere (CI logs)."""

    def __init__(self, console, items: list[FetchItem]):
        self.console = console
        self.lock = threading.Lock()
        self.bar = None
        if console is not None and console.is_terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False)
            total = sum(i.size or 0 for i in items)
            self.overall = self.bar.add_task(f"{len(items)} files", total=total or None)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def start(self, item: FetchItem):
        if not self.bar:
            return None
        with self.lock:
            return self.bar.add_task(f"  {item.filename[:48]}", total=item.size)

    def advance(self, task, count: int):
        if self.bar and count:
            with self.lock:
                self.bar.advance(task, count)
                self.bar.advance(self.overall, count)

    def set_total(self, task, total: int):
        if self.bar:
            with self.lock:
                self.bar.update(task, total=total)

    def finish(self, task, line: str):
        with self.lock:
            if self.bar:
                self.bar.remove_task(task)
                self.bar.console.print(line, highlight=False)
            elif self.console is not None:
                self.console.print(line, highlight=False)


def fetch(items: list[FetchItem], cache: Cache, *, search: list[Path], jobs: int = 4,
          timeouts: Timeouts = DEFAULT_TIMEOUTS, retries: Retries = DEFAULT_RETRIES, console=None) -> FetchReport:
    """Bring ``items`` into ``cache``; failures are collected as one-line messages, never raised."""
    cache.require_directory()
    report = FetchReport()
    pending = []
    for item in items:
        if item.sha256 and cache.has(item.sha256, item.filename, item.size):
            report.present.append(item.filename)
        else:
            pending.append(item)
    record = threading.Lock()
    with make_client(timeouts) as client, _Progress(console, pending) as progress:
        def one(item: FetchItem) -> None:
            task = progress.start(item)
            progress.finish(task, _fetch_one(item, cache, client, search, progress, task, report, record,
                                             retries))

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for future in [pool.submit(one, item) for item in pending]:
                future.result()
    _remove_empty(cache.root / "partial")
    return report


def _fetch_one(item: FetchItem, cache: Cache, client, search: list[Path], progress: _Progress, task,
               report: FetchReport, record: threading.Lock, retries: Retries = DEFAULT_RETRIES) -> str:
    """Bring one file in; returns the line to show for it (rich markup, message text escaped)."""
    from rich.markup import escape

    if item.sha256:
        local = find_local(item.filename, item.sha256, search)
        if local is not None:
            cache.store(local, item.sha256, item.filename)
            progress.advance(task, local.stat().st_size)
            with record:
                report.copied.append(item.filename)
            return escape(f"copied      {item.filename} from {local.parent}")
    if not item.urls:
        line = f"{item.filename}: not in the cache and no URL to fetch it from; add it with `fm9g-deploy artifacts add`"
        with record:
            report.failures.append(line)
        return f"[red]failed[/]      {escape(line)}"
    errors: list[str] = []
    for url in item.urls:
        key = item.sha256 or "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]
        partial = cache.partial_dir(key) / item.filename

        def get():
            return download(client, url, partial, label=item.filename, expected_size=item.size,
                            on_bytes=lambda n: progress.advance(task, n),
                            on_total=lambda n: progress.set_total(task, n), retries=retries)

        try:
            result = get()
            if item.sha256 and result.sha256 != item.sha256 and result.resumed_from:
                # A resumed file is spliced from two responses: the mismatch may be the splice, so
                # the whole file is fetched once more from zero before it is called wrong.
                discard_partial(partial)
                result = get()
        except DownloadError as exc:
            errors.append(str(exc))
            continue
        if item.sha256 and result.sha256 != item.sha256:
            discard_partial(partial)  # never kept: not in the cache, and nothing a later resume would trust
            _remove_empty(partial.parent)
            pinned = " (pinned on first fetch; if the publisher really replaced the file, delete the " \
                     f"{item.model} entry from {cache.root / 'pins.json'})" if item.model else ""
            errors.append(f"{item.filename}: sha256 mismatch from {url}: expected {item.sha256}, got "
                          f"{result.sha256}; the download was discarded{pinned}")
            continue
        try:
            cache.store(partial, result.sha256, item.filename, move=True)
        except OSError as exc:
            discard_partial(partial)
            errors.append(f"{item.filename}: cannot store it in the cache {cache.root} ({exc.strerror or exc}); "
                          "free space there (or fix its permissions) and run fetch again")
            continue
        _remove_empty(partial.parent)
        with record:
            if item.sha256 is None:
                cache.save_pin(item.model, {"filename": item.filename, "sha256": result.sha256,
                                            "size": result.size, "source": url, "pinned_at": now_iso()})
                report.warnings.append(pin_warning(item.model, item.filename, result.sha256))
            report.downloaded.append(item.filename)
            report.downloaded_bytes += result.fresh_bytes
        resumed = f" (resumed at {result.resumed_from} bytes)" if result.resumed_from else ""
        return escape(f"downloaded  {item.filename}{resumed}")
    line = errors[-1] + (f" (and {len(errors) - 1} other URL(s) failed)" if len(errors) > 1 else "")
    with record:
        report.failures.append(line)
    return f"[red]failed[/]      {escape(line)}"


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
