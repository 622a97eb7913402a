"""One HTTP download into a partial file: resumed with Range, hashed while it streams.

The partial file keeps what arrived, so the next attempt asks only for the rest (`Range:
bytes=N-`, guarded by `If-Range` so a changed file restarts from zero rather than being spliced).
Every failure is a DownloadError whose message is one line: what, where, and what to do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fm9g_deploy import __version__
from fm9g_deploy.artifacts.cache import CHUNK


class DownloadError(Exception):
    """A download that did not produce the expected bytes; str() is one line for the operator."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    #: Longest silence while reading before the download counts as stalled.
    read: float = 60.0


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    size: int
    resumed_from: int


def make_client(timeouts: Timeouts):
    import httpx

    return httpx.Client(
        timeout=httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect),
        follow_redirects=True,
        headers={"User-Agent": f"fm9g-deploy/{__version__}"},
    )


def download(client, url: str, partial: Path, *, label: str, expected_size: int | None = None,
             on_bytes: Callable[[int], None] = lambda n: None,
             on_total: Callable[[int], None] = lambda n: None) -> Downloaded:
    """Download ``url`` into ``partial`` (resuming what is there) and return its sha256 and size.

    The caller compares the hash with what it expects; this only guarantees the whole body came.
    """
    import httpx

    partial.parent.mkdir(parents=True, exist_ok=True)
    validator_file = partial.with_name(partial.name + ".validator")
    offset = partial.stat().st_size if partial.exists() else 0
    validator = _read_validator(validator_file) if offset else None
    if offset and expected_size is not None and offset > expected_size:
        offset, validator = 0, None
    digest = hashlib.sha256()
    if offset:
        with partial.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    resumed_from = offset
    total: int | None = None
    received = offset
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                # What we hold is not a prefix the server recognises: start again.
                partial.unlink(missing_ok=True)
                validator_file.unlink(missing_ok=True)
                response.close()
                return download(client, url, partial, label=label, expected_size=expected_size,
                                on_bytes=on_bytes, on_total=on_total)
            if response.status_code not in (200, 206):
                raise DownloadError(f"{label}: {url} answered HTTP {response.status_code} "
                                    f"{response.reason_phrase or ''}".rstrip() + _status_hint(response.status_code))
            if response.status_code == 200 and offset:
                offset, resumed_from, digest = 0, 0, hashlib.sha256()  # the server sent it all again
            elif response.status_code == 206 and not _range_starts_at(response, offset):
                raise DownloadError(f"{label}: {url} answered a range that does not start at byte {offset}; "
                                    f"delete {partial} and fetch again")
            total = _total_size(response, offset) or expected_size
            if total is not None:
                on_total(total)
            on_bytes(offset)
            _write_validator(validator_file, response)
            received = offset
            with partial.open("ab" if offset else "wb") as handle:
                for chunk in response.iter_bytes(CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    on_bytes(len(chunk))
    except DownloadError:
        raise
    except httpx.TimeoutException as exc:
        phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "reading"
        raise DownloadError(f"{label}: timed out {phase} {url} (no data for {_timeout_of(client, exc):g} s); "
                            "check the network and run fetch again (it resumes)") from None
    except httpx.RemoteProtocolError as exc:
        of = f" of {total}" if total else ""
        raise DownloadError(f"{label}: short read from {url}: the connection closed after {received}{of} bytes "
                            f"({_first_line(exc)}); run fetch again to resume") from None
    except httpx.ConnectError as exc:
        raise DownloadError(f"{label}: cannot connect to {url} ({_first_line(exc)}); check the address "
                            "and the network") from None
    except httpx.HTTPError as exc:
        raise DownloadError(f"{label}: download from {url} failed ({type(exc).__name__}: {_first_line(exc)}); "
                            "run fetch again to resume") from None
    if total is not None and received != total:
        raise DownloadError(f"{label}: short read from {url}: got {received} of {total} bytes; "
                            "run fetch again to resume")
    validator_file.unlink(missing_ok=True)
    return Downloaded(path=partial, sha256=digest.hexdigest(), size=received, resumed_from=resumed_from)


def _status_hint(status: int) -> str:
    if status == 404:
        return " (not found); check the URL, or regenerate the lock if the index dropped the file"
    if status in (401, 403):
        return " (access denied); the file is not public at this address"
    if status >= 500:
        return " (server error); try again later"
    return ""


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


def _read_validator(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("validator")
    except (OSError, ValueError, AttributeError):
        return None


def _write_validator(path: Path, response) -> None:
    """Remember the ETag (or Last-Modified) so a resume can ask for 'the rest of this same file'."""
    etag = response.headers.get("etag")
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("last-modified")
    if validator:
        path.write_text(json.dumps({"validator": validator}))
    else:
        path.unlink(missing_ok=True)


def _timeout_of(client, exc) -> float:
    import httpx

    timeout = client.timeout
    value = timeout.connect if isinstance(exc, httpx.ConnectTimeout) else timeout.read
    return value or 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
