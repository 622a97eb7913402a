"""Fetching into the cache against a real HTTP server on 127.0.0.1: resume, hashes, one-line errors,
trust-on-first-use pins for model tarballs."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.download import DownloadError, Retries, Timeouts, download, make_client
from fm9g_deploy.artifacts.fetch import FetchItem, fetch, model_item
from fm9g_deploy.artifacts.lock import Lock, LockedArtifact, LockTarget, lock_text
from tests.conftest import run_cli
from tests.fixtures.artifacts.http_faults import STALL_SECONDS, FaultServer

BLOB = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not a round size
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
FAST = Timeouts(connect=5, read=0.5)
ONCE = Retries(attempts=1)  # one try: each fetch call below is one request


@pytest.fixture
def server():
    instance = FaultServer(blobs={"blob.whl": BLOB, "9G4B.tar": BLOB[:100_000]}).start()
    yield instance
    instance.stop()


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache")


def item(url: str, sha256: str | None = BLOB_SHA, **extra) -> FetchItem:
    return FetchItem(filename="blob.whl", urls=(url,), sha256=sha256, **extra)


def test_download_stores_file_under_its_hash(server, cache):
    report = fetch([item(server.url("files", "blob.whl"))], cache, search=[], timeouts=FAST)
    assert report.downloaded == ["blob.whl"] and not report.failures
    stored = cache.path_for(BLOB_SHA, "blob.whl")
    assert stored.read_bytes() == BLOB
    assert not list((cache.root / "partial").rglob("*.whl"))


def test_fetch_skips_files_already_cached(server, cache):
    fetch([item(server.url("files", "blob.whl"))], cache, search=[], timeouts=FAST)
    server.requests.clear()
    report = fetch([item(server.url("files", "blob.whl"))], cache, search=[], timeouts=FAST)
    assert report.present == ["blob.whl"]
    assert server.requests == []


def test_interrupted_download_resumes_with_range(server, cache):
    first = fetch([item(server.url("cut", "blob.whl"))], cache, search=[], timeouts=FAST, retries=ONCE)
    assert len(first.failures) == 1 and "short read" in first.failures[0]
    assert not cache.has(BLOB_SHA, "blob.whl")
    partial = cache.partial_dir(BLOB_SHA) / "blob.whl"
    kept = partial.stat().st_size
    assert 0 < kept < len(BLOB)

    second = fetch([item(server.url("cut", "blob.whl"))], cache, search=[], timeouts=FAST, retries=ONCE)
    assert second.downloaded == ["blob.whl"], second.failures
    resumed = server.requests[-1]
    assert resumed.range == f"bytes={kept}-"
    assert resumed.sent == len(BLOB) - kept  # only the rest came over the wire
    assert cache.path_for(BLOB_SHA, "blob.whl").read_bytes() == BLOB


def test_hash_mismatch_is_refused_and_not_kept(server, cache):
    report = fetch([item(server.url("changed", "blob.whl"))], cache, search=[], timeouts=FAST)
    assert len(report.failures) == 1
    line = report.failures[0]
    assert "sha256 mismatch" in line and BLOB_SHA in line and "\n" not in line
    assert not (cache.root / "sha256").exists() or not any((cache.root / "sha256").rglob("blob.whl"))
    assert not (cache.partial_dir(BLOB_SHA) / "blob.whl").exists()


@pytest.mark.parametrize("kind, words", [
    ("missing", ["HTTP 404", "not found"]),
    ("cut", ["short read", "run fetch again to resume"]),
    ("stall", ["timed out reading", "0.5 s"]),
])
def test_failures_are_one_line(server, cache, kind, words):
    with make_client(FAST) as client, pytest.raises(DownloadError) as caught:
        download(client, server.url(kind, "blob.whl"), cache.partial_dir("t") / "blob.whl", label="blob.whl",
                 retries=ONCE)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("blob.whl: ")
    for word in words:
        assert word in message


def test_stall_gives_up_long_before_the_server_would(server, cache):
    import time

    started = time.monotonic()
    report = fetch([item(server.url("stall", "blob.whl"))], cache, search=[], timeouts=FAST,
                   retries=Retries(attempts=2, backoff=0.05))
    assert report.failures and "timed out" in report.failures[0] and "after 2 tries" in report.failures[0]
    assert len(server.requests) == 2
    assert time.monotonic() - started < STALL_SECONDS


def test_connection_refused_is_one_line(cache):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = fetch([item(f"http://127.0.0.1:{port}/blob.whl")], cache, search=[], timeouts=FAST)
    assert len(report.failures) == 1 and "cannot connect" in report.failures[0]
    assert "\n" not in report.failures[0]


def test_local_directory_with_matching_hash_is_used_instead_of_the_network(server, cache, tmp_path):
    local = tmp_path / "wheels"
    local.mkdir()
    (local / "blob.whl").write_bytes(BLOB)
    report = fetch([item(server.url("files", "blob.whl"))], cache, search=[local], timeouts=FAST)
    assert report.copied == ["blob.whl"]
    assert server.requests == []


def test_local_file_with_wrong_hash_is_ignored(server, cache, tmp_path):
    local = tmp_path / "wheels"
    local.mkdir()
    (local / "blob.whl").write_bytes(b"not the locked bytes")
    report = fetch([item(server.url("files", "blob.whl"))], cache, search=[local], timeouts=FAST)
    assert report.downloaded == ["blob.whl"] and report.copied == []


def test_model_tarball_is_pinned_on_first_fetch_then_enforced(server, cache, monkeypatch):
    from fm9g_deploy import catalog

    spec = catalog.get_model("fm9g-4b").model_copy(update={"tarball_urls": [server.url("files", "9G4B.tar")]})
    monkeypatch.setitem(catalog.load_catalog(), "fm9g-4b", spec)

    first = model_item("fm9g-4b", cache)
    assert first.sha256 is None  # nothing published, nothing pinned yet
    report = fetch([first], cache, search=[], timeouts=FAST)
    expected = hashlib.sha256(BLOB[:100_000]).hexdigest()
    assert report.downloaded == ["9G4B.tar"]
    assert len(report.warnings) == 1
    assert "no published checksum" in report.warnings[0] and expected in report.warnings[0]
    pin = json.loads((cache.root / "pins.json").read_text())["models"]["fm9g-4b"]
    assert pin["sha256"] == expected and pin["size"] == 100_000

    # The mirror now serves other bytes: the pin refuses them and nothing is stored.
    cache.path_for(expected, "9G4B.tar").unlink()
    tampered = spec.model_copy(update={"tarball_urls": [server.url("changed", "9G4B.tar")]})
    monkeypatch.setitem(catalog.load_catalog(), "fm9g-4b", tampered)
    second = fetch([model_item("fm9g-4b", cache)], cache, search=[], timeouts=FAST)
    assert len(second.failures) == 1
    assert "sha256 mismatch" in second.failures[0] and "pinned on first fetch" in second.failures[0]
    assert not second.warnings
    assert not any((cache.root / "sha256").rglob("9G4B.tar"))
    assert json.loads((cache.root / "pins.json").read_text())["models"]["fm9g-4b"]["sha256"] == expected


def _lock_for(urls: dict[str, str]) -> Lock:
    artifacts = [LockedArtifact(name=name, version="1.0", filename=f"{name}-1.0-py3-none-any.whl", url=url,
                                sha256=BLOB_SHA if name == "good" else "0" * 64, size=len(BLOB), kind="wheel",
                                sets=["base"]) for name, url in urls.items()]
    return Lock(profile="cpu", generated_by="test", index_url="http://127.0.0.1/simple",
                target=LockTarget(python="3.11", abi="cp311", platforms=["manylinux_2_36_x86_64"], markers={}),
                requirements=list(urls), sets={"base": "test"}, artifacts=artifacts)


def test_cli_fetch_publishes_and_reports_each_failure_on_one_line(server, tmp_path):
    lock_file = tmp_path / "lock.json"
    lock_file.write_text(lock_text(_lock_for({"good": server.url("files", "blob.whl")})))
    ok = run_cli("artifacts", "fetch", "--profile", "cpu", "--lock", str(lock_file),
                 "--cache-dir", str(tmp_path / "cache"), timeout=120)
    assert ok.returncode == 0, ok.stderr
    requirements = (tmp_path / "cache" / "published" / "cpu" / "requirements.txt").read_text()
    assert f"good==1.0 --hash=sha256:{BLOB_SHA}" in requirements

    lock_file.write_text(lock_text(_lock_for({"gone": server.url("missing", "blob.whl")})))
    failed = run_cli("artifacts", "fetch", "--profile", "cpu", "--lock", str(lock_file),
                     "--cache-dir", str(tmp_path / "cache"), "--timeout", "2", timeout=120)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("fm9g-deploy: failed: gone-1.0-py3-none-any.whl: ") and "HTTP 404" in last
    assert "Traceback" not in failed.stderr
    # The set is incomplete now: its old view is withdrawn rather than left to mislead hosts.
    assert not (tmp_path / "cache" / "published" / "cpu" / "requirements.txt").exists()


def test_conda_packages_are_fetched_like_every_locked_file_and_checked_by_sha256(cache):
    from fm9g_deploy.artifacts.fetch import plan

    good_name, bad_name = "python-3.10.16-h0_cpython.conda", "pip-25.1.1-pyh0_0.conda"
    server = FaultServer(blobs={good_name: BLOB, bad_name: BLOB}).start()
    try:
        good = LockedArtifact(name="python", version="3.10.16", filename=good_name, url=server.url("files", good_name),
                              sha256=BLOB_SHA, size=len(BLOB), kind="conda")
        bad = LockedArtifact(name="pip", version="25.1.1", filename=bad_name, url=server.url("files", bad_name),
                             sha256="0" * 64, kind="conda")  # the lock says other bytes than the mirror serves
        lock = _lock_for({}).model_copy(update={"artifacts": [good, bad]})
        items, warnings, problems = plan(lock, cache)
        assert [(i.filename, i.sha256) for i in items] == [(good_name, BLOB_SHA), (bad_name, "0" * 64)]
        assert not warnings and not problems
        report = fetch(items, cache, search=[], timeouts=FAST, retries=ONCE)
    finally:
        server.stop()
    assert report.downloaded == [good_name] and cache.path_for(BLOB_SHA, good_name).read_bytes() == BLOB
    assert len(report.failures) == 1 and report.failures[0].startswith(f"{bad_name}: sha256 mismatch")
    assert not cache.has("0" * 64, bad_name)
