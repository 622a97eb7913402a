"""Downloads against a fault-injecting mirror on 127.0.0.1: stalls, 5xx, 404, truncated bodies,
connection resets, files that change between resumes (with and without validators, and a server
that ignores If-Range). Whatever happens, the cache never keeps a file whose bytes do not hash to
its name, retries are bounded (the mirror counts the requests), and errors are one line."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.download import Retries, Timeouts, download, make_client, validator_path
from fm9g_deploy.artifacts.fetch import FetchItem, fetch

SIZE = 3 * 1024 * 1024 + 7  # several network reads, so a cut leaves a real prefix behind
V1 = os.urandom(SIZE)
V2 = os.urandom(SIZE)  # the same file after the publisher replaced it: same length, other bytes
FAST = Timeouts(connect=2, read=0.3)
QUICK = Retries(attempts=4, backoff=0.01, max_delay=0.05)
NAME = "blob.whl"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Version:
    data: bytes
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class Seen:
    range: str | None
    if_range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class Mirror:
    """One file, served with Range/If-Range as a server should, unless a fault is planned.

    plan: one action per request, consumed in order ("ok" once it is empty):
      ok | 500 | 502 | 503 | 504 | 404 | 403 | 503-retry-after (asks for an hour)
      cut     send half the body (Content-Length says all), then close
      reset   send half the body, then reset the connection (RST)
      stall   send half the body, then go silent (until the test ends)
      cut+change   cut, then the file becomes ``after`` (the publisher replaced it)
    """

    version: Version
    after: Version | None = None
    plan: list[str] = field(default_factory=list)
    honour_if_range: bool = True
    requests: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{NAME}"

    def start(self) -> Mirror:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - the http.server naming
                seen = Seen(self.headers.get("Range"), self.headers.get("If-Range"))
                mirror.requests.append(seen)
                action = mirror.plan.pop(0) if mirror.plan else "ok"
                if action[:3].isdigit():
                    seen.status = int(action[:3])
                    self.send_response(seen.status)
                    if action.endswith("retry-after"):
                        self.send_header("Retry-After", "3600")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                version = mirror.version
                data, start = version.data, 0
                current = {version.etag, version.last_modified} - {None}
                if seen.range and (not mirror.honour_if_range or not seen.if_range or seen.if_range in current):
                    start = int(seen.range.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    seen.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                seen.status = 206 if start else 200
                self.send_response(seen.status)
                self.send_header("Content-Length", str(len(data) - start))
                if version.etag:
                    self.send_header("ETag", version.etag)
                if version.last_modified:
                    self.send_header("Last-Modified", version.last_modified)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                if action == "ok":
                    return self._send(seen, body)
                self._send(seen, body[: len(body) // 2])
                if action == "stall":
                    mirror.release.wait(10)
                elif action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif action == "cut+change":
                    mirror.version = mirror.after
                self.close_connection = True

            def _send(self, seen, chunk):
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    seen.sent += len(chunk)
                except OSError:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def bounded():
    """No test here may hang: each gets 10 s, then fails."""
    def expired(*_):
        raise TimeoutError("test ran past 10 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def serve():
    started: list[Mirror] = []

    def make(version: Version, **options) -> Mirror:
        started.append(Mirror(version, **options).start())
        return started[-1]

    yield make
    for mirror in started:
        mirror.stop()


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache")


def fetch_one(mirror: Mirror, cache: Cache, expected: bytes, retries: Retries = QUICK):
    item = FetchItem(filename=NAME, urls=(mirror.url,), sha256=sha(expected), size=len(expected))
    return fetch([item], cache, search=[], timeouts=FAST, retries=retries)


def assert_cache_sound(cache: Cache, *, partial_left: bool = False) -> None:
    """Every stored file hashes to the name it is stored under; no partial left unless allowed."""
    for expected, path in cache.stored_files():
        assert sha(path.read_bytes()) == expected, f"corrupt file kept: {path}"
    if not partial_left:
        assert [p for p in cache.root.glob("partial/**/*") if p.is_file()] == []


def stored(cache: Cache, data: bytes) -> bool:
    path = cache.path_for(sha(data), NAME)
    return path.is_file() and path.read_bytes() == data


# -- transient failures are retried, a bounded number of times -----------------------------------

def test_a_stall_mid_body_is_retried_and_resumed(serve, cache):
    mirror = serve(Version(V1, etag='"v1"'), plan=["stall"])
    report = fetch_one(mirror, cache, V1)
    assert report.downloaded == [NAME], report.failures
    assert stored(cache, V1)
    first, second = mirror.requests
    assert second.range == f"bytes={SIZE - second.sent}-" and second.if_range == '"v1"' and second.status == 206
    assert second.sent < SIZE  # only the rest came again
    assert_cache_sound(cache)


def test_a_mirror_that_keeps_stalling_is_given_up_on_after_the_last_try(serve, cache):
    mirror = serve(Version(V1, etag='"v1"'), plan=["stall"] * 10)
    started = time.monotonic()
    report = fetch_one(mirror, cache, V1, Retries(attempts=3, backoff=0.01))
    assert len(mirror.requests) == 3
    assert time.monotonic() - started < 3
    [line] = report.failures
    assert "\n" not in line and line.startswith(f"{NAME}: timed out reading {mirror.url}")
    assert "after 3 tries" in line and "run fetch again" in line
    assert not report.downloaded
    assert_cache_sound(cache, partial_left=True)  # a true prefix, with its validator, for the next resume


@pytest.mark.parametrize("status", ["500", "502", "503", "504"])
def test_a_server_error_then_success_is_retried(serve, cache, status):
    mirror = serve(Version(V1, etag='"v1"'), plan=[status, status])
    report = fetch_one(mirror, cache, V1)
    assert report.downloaded == [NAME], report.failures
    assert [seen.status for seen in mirror.requests] == [int(status), int(status), 200]
    assert stored(cache, V1)


def test_server_errors_are_retried_a_bounded_number_of_times_with_backoff(serve, cache):
    mirror = serve(Version(V1, etag='"v1"'), plan=["503"] * 10)
    waits: list[float] = []
    with make_client(FAST) as client, pytest.raises(Exception) as caught:
        download(client, mirror.url, cache.partial_dir("x") / NAME, label=NAME,
                 retries=Retries(attempts=4, backoff=0.01, max_delay=1), sleep=waits.append)
    assert len(mirror.requests) == 4
    assert waits == [0.01, 0.02, 0.04]  # doubling, one wait between two tries
    message = str(caught.value)
    assert "\n" not in message
    assert mirror.url in message and "HTTP 503" in message and "after 4 tries" in message
    assert "the mirror is failing" in message


def test_retry_after_is_honoured_only_up_to_our_bound(serve, cache):
    mirror = serve(Version(V1, etag='"v1"'), plan=["503-retry-after"])
    waits: list[float] = []
    with make_client(FAST) as client:
        result = download(client, mirror.url, cache.partial_dir("x") / NAME, label=NAME,
                          retries=Retries(attempts=2, backoff=0.01, max_delay=0.05), sleep=waits.append)
    assert result.sha256 == sha(V1) and waits == [0.05]


@pytest.mark.parametrize("status, words", [("404", "not found"), ("403", "access denied")])
def test_client_errors_are_never_retried(serve, cache, status, words):
    mirror = serve(Version(V1, etag='"v1"'), plan=[status] * 10)
    report = fetch_one(mirror, cache, V1)
    assert len(mirror.requests) == 1
    [line] = report.failures
    assert "\n" not in line and f"{mirror.url} answered HTTP {status}" in line and words in line
    assert "tries" not in line
    assert_cache_sound(cache)


# -- truncated bodies and dropped connections resume from what arrived ---------------------------

@pytest.mark.parametrize("fault", ["cut", "reset"])
def test_a_truncated_body_is_resumed_with_if_range(serve, cache, fault):
    mirror = serve(Version(V1, etag='"v1"'), plan=[fault])
    report = fetch_one(mirror, cache, V1)
    assert report.downloaded == [NAME], report.failures
    first, second = mirror.requests
    assert second.if_range == '"v1"' and second.status == 206
    assert 0 < SIZE - second.sent <= first.sent  # resumed at (at most) what the first request sent
    assert stored(cache, V1)
    assert not validator_path(cache.partial_dir(sha(V1)) / NAME).exists()


def test_a_truncated_body_with_one_try_is_a_clear_error_and_nothing_is_stored(serve, cache):
    mirror = serve(Version(V1, etag='"v1"'), plan=["cut"])
    report = fetch_one(mirror, cache, V1, Retries(attempts=1))
    [line] = report.failures
    assert "\n" not in line and "short read" in line and "run fetch again to resume" in line
    assert not stored(cache, V1) and not any(cache.stored_files())


def test_last_modified_alone_is_a_validator_to_resume_with(serve, cache):
    stamp = "Tue, 01 Jul 2025 10:00:00 GMT"
    mirror = serve(Version(V1, last_modified=stamp), plan=["cut"])
    report = fetch_one(mirror, cache, V1)
    assert report.downloaded == [NAME]
    assert mirror.requests[1].if_range == stamp and mirror.requests[1].status == 206


# -- a file that changes between resumes is never spliced -----------------------------------------

def test_without_a_validator_a_partial_is_never_resumed(serve, cache):
    mirror = serve(Version(V1), after=Version(V2), plan=["cut+change"])
    report = fetch_one(mirror, cache, V2)  # the lock names the new file
    assert report.downloaded == [NAME], report.failures
    assert [seen.range for seen in mirror.requests] == [None, None]  # started over: no Range at all
    assert stored(cache, V2)
    assert_cache_sound(cache)


def test_a_stale_partial_from_an_earlier_run_without_validator_is_started_over(serve, cache):
    partial = cache.partial_dir(sha(V2)) / NAME
    partial.parent.mkdir(parents=True)
    partial.write_bytes(V1[: SIZE // 2])  # what an older client left, with no validator
    mirror = serve(Version(V2))
    report = fetch_one(mirror, cache, V2)
    assert report.downloaded == [NAME], report.failures
    assert [seen.range for seen in mirror.requests] == [None]
    assert stored(cache, V2)


@pytest.mark.parametrize("damage", [b"[1]", b'{"validator": 5}', b'{"validator": ""}', b"\xff\xfe", b"{"])
def test_a_damaged_validator_file_counts_as_no_validator(serve, cache, damage):
    partial = cache.partial_dir(sha(V2)) / NAME
    partial.parent.mkdir(parents=True)
    partial.write_bytes(V1[: SIZE // 2])
    validator_path(partial).write_bytes(damage)
    mirror = serve(Version(V2, etag='"v2"'))
    report = fetch_one(mirror, cache, V2)
    assert report.downloaded == [NAME], report.failures
    assert [seen.range for seen in mirror.requests] == [None]
    assert stored(cache, V2)


@pytest.mark.parametrize("lock_names", ["new", "old"])
def test_a_file_replaced_between_resumes_is_fetched_whole_or_refused(serve, cache, lock_names):
    mirror = serve(Version(V1, etag='"v1"'), after=Version(V2, etag='"v2"'), plan=["cut+change"])
    expected = V2 if lock_names == "new" else V1
    report = fetch_one(mirror, cache, expected)
    first, second = mirror.requests
    assert second.if_range == '"v1"' and second.status == 200  # the mirror said: here is the new file, whole
    if lock_names == "new":
        assert report.downloaded == [NAME] and stored(cache, V2)
    else:
        [line] = report.failures
        assert "sha256 mismatch" in line and "discarded" in line and "\n" not in line
        assert not any(cache.stored_files())
    assert_cache_sound(cache)  # and no partial left that a later resume would trust


def test_a_mirror_that_ignores_if_range_cannot_splice_a_changed_file(serve, cache):
    mirror = serve(Version(V1, etag='"v1"'), after=Version(V2, etag='"v2"'), plan=["cut+change"],
                   honour_if_range=False)
    with make_client(FAST) as client:
        result = download(client, mirror.url, cache.partial_dir("x") / NAME, label=NAME, retries=QUICK)
    # The rest of the *new* file came with its new ETag: refused at once, then fetched from zero.
    assert [seen.status for seen in mirror.requests] == [200, 206, 200]
    assert mirror.requests[2].range is None
    assert result.sha256 == sha(V2) and result.resumed_from == 0


def test_a_mirror_that_lies_about_its_validator_still_leaves_no_corrupt_file(serve, cache):
    # Same ETag for other bytes: the resume is spliced, the hash says so, the file is fetched once more whole.
    mirror = serve(Version(V1, etag='"same"'), after=Version(V2, etag='"same"'), plan=["cut+change"])
    report = fetch_one(mirror, cache, V2)
    assert report.downloaded == [NAME], report.failures
    assert [seen.status for seen in mirror.requests] == [200, 206, 200]
    assert stored(cache, V2)

    # And when the whole file does not match either, nothing at all is kept.
    cache_two = Cache(cache.root.parent / "two")
    liar = serve(Version(V1, etag='"same"'), after=Version(V2, etag='"same"'), plan=["cut+change"])
    report = fetch_one(liar, cache_two, V1)
    [line] = report.failures
    assert "sha256 mismatch" in line
    assert len(liar.requests) == 3  # bounded: one refetch from zero, no more
    assert not any(cache_two.stored_files())
    assert_cache_sound(cache_two)
