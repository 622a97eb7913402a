"""One HTTP download into a partial file: resumed with Range, hashed while it streams, retried.

The partial file keeps what arrived, so the next attempt asks only for the rest (`Range:
bytes=N-`). A resume is only ever asked for with `If-Range` and the validator (ETag or
Last-Modified) the bytes came with, so a changed file restarts from zero rather than being
spliced; bytes that came without a validator are never resumed. Transient failures (HTTP
500/502/503/504, a dropped connection, a stall) are retried a bounded number of times with
backoff; anything else (a 404, a refused connection) fails at once. Every failure is a
DownloadError whose message is one line: what, where, and what to do.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fm9g_deploy import __version__
from fm9g_deploy.artifacts.cache import CHUNK

#: Statuses that say "the server is having a bad moment", not "this request is wrong".
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class DownloadError(Exception):
    """A download that did not produce the expected bytes; str() is one line for the operator."""

    def __init__(self, what: str, fix: str, *, transient: bool = False, retry_after: float | None = None):
        super().__init__(f"{what}; {fix}")
        self.what, self.fix = what, fix
        #: Whether trying again soon may succeed (5xx, dropped connection, stall).
        self.transient = transient
        #: Seconds the server asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after


@dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    #: Longest silence while reading before the download counts as stalled.
    read: float = 60.0


@dataclass(frozen=True)
class Retries:
    #: Tries per URL, the first one included.
    attempts: int = 4
    #: Wait before the second try, doubled before each later one, never more than max_delay.
    backoff: float = 1.0
    max_delay: float = 30.0

    def delay(self, failed: int, retry_after: float | None = None) -> float:
        wait = min(self.max_delay, self.backoff * 2 ** (failed - 1))
        if retry_after is not None:  # honoured, but never past our own bound
            wait = max(wait, min(retry_after, self.max_delay))
        return wait


DEFAULT_RETRIES = Retries()


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    size: int
    #: Where the last (successful) request started: > 0 means the file is spliced from a resume.
    resumed_from: int
    #: Bytes that came over the wire during this call, every try counted.
    fresh_bytes: int = 0


def make_client(timeouts: Timeouts):
    import httpx

    return httpx.Client(
        timeout=httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect),
        follow_redirects=True,
        headers={"User-Agent": f"fm9g-deploy/{__version__}"},
    )


def validator_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".validator")


def discard_partial(partial: Path) -> None:
    """Forget a partial download and its validator: nothing left for a later resume to trust."""
    partial.unlink(missing_ok=True)
    validator_path(partial).unlink(missing_ok=True)


def download(client, url: str, partial: Path, *, label: str, expected_size: int | None = None,
             on_bytes: Callable[[int], None] = lambda n: None,
             on_total: Callable[[int], None] = lambda n: None,
             retries: Retries = DEFAULT_RETRIES, sleep: Callable[[float], None] = time.sleep) -> Downloaded:
    """Download ``url`` into ``partial`` (resuming what is there) and return its sha256 and size.

    The caller compares the hash with what it expects; this only guarantees the whole body came,
    from one version of the file.
    """
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{label}: cannot create {partial.parent} ({exc.strerror or exc})",
                            "check the cache dir's permissions and free space") from None
    progress = _Shown(on_bytes)
    attempts = max(1, retries.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return _attempt(client, url, partial, label=label, expected_size=expected_size, progress=progress,
                            on_total=on_total)
        except DownloadError as exc:
            if not exc.transient or attempt == attempts:
                if attempt == 1:
                    raise
                raise DownloadError(f"{exc.what} (after {attempt} tries)", exc.fix) from None
            sleep(retries.delay(attempt, exc.retry_after))
    raise AssertionError("unreachable")  # the loop returns or raises


class _Shown:
    """What the progress callback has been told, so a restart from zero can take it back."""

    def __init__(self, on_bytes: Callable[[int], None]):
        self.on_bytes = on_bytes
        self.shown = 0
        self.fresh = 0

    def at(self, offset: int) -> None:
        if offset != self.shown:
            self.on_bytes(offset - self.shown)
            self.shown = offset

    def add(self, count: int) -> None:
        self.on_bytes(count)
        self.shown += count
        self.fresh += count


def _attempt(client, url: str, partial: Path, *, label: str, expected_size: int | None, progress: _Shown,
             on_total: Callable[[int], None]) -> Downloaded:
    """One try (plus one restart from zero when the server refuses our range)."""
    import httpx

    validator_file = validator_path(partial)
    offset = partial.stat().st_size if partial.exists() else 0
    validator = _read_validator(validator_file) if offset else None
    if offset and (validator is None or (expected_size is not None and offset > expected_size)):
        # Bytes with no validator may belong to an older version of the file: never splice them.
        discard_partial(partial)
        offset = 0
    received, total = offset, None
    digest = hashlib.sha256()
    try:
        for _ in range(2):
            headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset else {}
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and offset:
                    # What we hold is not a prefix the server recognises: start again from zero.
                    discard_partial(partial)
                    offset = received = 0
                    continue
                offset = _check_response(response, url, partial, label, offset, validator)
                total = _total_size(response, offset) or expected_size
                if total is not None:
                    on_total(total)
                progress.at(offset)
                if offset == 0:
                    # The validator goes with these bytes, written before them: a later resume trusts both.
                    discard_partial(partial)
                    _write_validator(validator_file, response)
                else:
                    _hash_prefix(partial, digest)
                received = offset
                with partial.open("ab" if offset else "wb") as handle:
                    # Unbuffered: every byte that arrived before a stall is on disk for the resume.
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        progress.add(len(chunk))
            break
    except DownloadError:
        raise
    except httpx.TimeoutException as exc:
        phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "reading"
        raise DownloadError(f"{label}: timed out {phase} {url} (no data for {_timeout_of(client, exc):g} s)",
                            "check the network and the mirror, then run fetch again (it resumes)",
                            transient=True) from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        of = f" of {total}" if total else ""
        raise DownloadError(f"{label}: short read from {url}: the connection closed after {received}{of} bytes "
                            f"({_first_line(exc)})", "run fetch again to resume", transient=True) from None
    except httpx.ConnectError as exc:
        raise DownloadError(f"{label}: cannot connect to {url} ({_first_line(exc)})",
                            "check the address and the network") from None
    except httpx.HTTPError as exc:
        raise DownloadError(f"{label}: download from {url} failed ({type(exc).__name__}: {_first_line(exc)})",
                            "run fetch again to resume") from None
    except OSError as exc:  # writing the partial file: a full disk, permissions
        raise DownloadError(f"{label}: cannot write {partial} ({exc.strerror or exc})",
                            "free space in the cache dir (or fix its permissions) and run fetch again") from None
    if total is not None and received != total:
        raise DownloadError(f"{label}: short read from {url}: got {received} of {total} bytes",
                            "run fetch again to resume", transient=True)
    validator_file.unlink(missing_ok=True)
    return Downloaded(path=partial, sha256=digest.hexdigest(), size=received, resumed_from=offset,
                      fresh_bytes=progress.fresh)


def _hash_prefix(partial: Path, digest) -> None:
    with partial.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)


def _check_response(response, url: str, partial: Path, label: str, offset: int, validator: str | None) -> int:
    """The offset the body starts at (0 when the server sends the whole file); DownloadError otherwise."""
    status = response.status_code
    if status not in (200, 206):
        raise DownloadError(f"{label}: {url} answered HTTP {status} {response.reason_phrase or ''}".rstrip()
                            + _STATUS_WHAT.get(status, ""), _status_fix(status), transient=status in RETRY_STATUSES,
                            retry_after=_retry_after(response))
    if status == 200:
        return 0  # the whole file (again): a changed file, or a server without ranges
    if not offset or not _range_starts_at(response, offset):
        discard_partial(partial)
        raise DownloadError(f"{label}: {url} answered a range that does not start at byte {offset}",
                            "run fetch again (it starts over)", transient=True)
    current = _validator_of(response)
    if current is not None and current != validator:
        # A server that ignores If-Range sends the rest of a *newer* file: splicing it would corrupt.
        discard_partial(partial)
        raise DownloadError(f"{label}: {url} changed since the download began", "run fetch again (it starts over)",
                            transient=True)
    return offset


_STATUS_WHAT = {404: " (not found)", 401: " (access denied)", 403: " (access denied)"}


def _status_fix(status: int) -> str:
    if status == 404:
        return "check the URL, or regenerate the lock if the index dropped the file"
    if status in (401, 403):
        return "the file is not public at this address: check the URL or the mirror's access rules"
    if status >= 500:
        return "the mirror is failing: check it (or wait until it recovers), then run fetch again (it resumes)"
    return "check the URL and the mirror, then run fetch again"


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _range_starts_at(response, offset: int) -> bool:
    content_range = response.headers.get("content-range", "")
    try:
        return int(content_range.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False


def _total_size(response, offset: int) -> int | None:
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _validator_of(response) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range can name this exact version by."""
    etag = response.headers.get("etag")
    return etag if etag and not etag.startswith("W/") else response.headers.get("last-modified")


def _read_validator(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("validator")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _write_validator(path: Path, response) -> None:
    """Remember the validator so a resume can ask for 'the rest of this same file' (none: no resume)."""
    validator = _validator_of(response)
    if validator:
        path.write_text(json.dumps({"validator": validator}), encoding="utf-8")


def _timeout_of(client, exc) -> float:
    import httpx

    timeout = client.timeout
    value = timeout.connect if isinstance(exc, httpx.ConnectTimeout) else timeout.read
    return value or 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
