"""The published pip view and the mirror server: real pip installs offline from `artifacts serve`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import httpx
import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.lock import Lock, LockedArtifact, LockTarget
from fm9g_deploy.artifacts.publish import file_url, publish, set_url
from fm9g_deploy.artifacts.serve import make_server, parse_bind
from tests.fixtures.artifacts.wheels import make_wheel, sha256_of


def _locked(path, name, version, sets, kind="wheel", family=None):
    return LockedArtifact(name=name, version=version, filename=path.name, sha256=sha256_of(path),
                          size=path.stat().st_size, kind=kind, sets=sets, family=family,
                          url=None if kind == "operator-wheel" else f"https://files.example/{path.name}")


@pytest.fixture
def published(tmp_path):
    """A cache holding a two-set lock (base + one operator family), published."""
    wheels = tmp_path / "wheels"
    app = make_wheel(wheels, "fm9g-app", "1.0", requires=["fm9g-dep==2.0+local"])
    dep = make_wheel(wheels, "fm9g-dep", "2.0+local")  # a local version: '+' in the file name
    extra = make_wheel(wheels / "family", "fm9g-extra", "3.0")
    cache = Cache(tmp_path / "cache")
    for path in (app, dep, extra):
        cache.store(path, sha256_of(path), path.name)
    lock = Lock(profile="testprof", generated_by="test", index_url="https://files.example/simple",
                target=LockTarget(python="3.11", abi="cp311", platforms=["manylinux_2_36_x86_64"], markers={}),
                requirements=["fm9g-app"], sets={"base": "base", "fam": "base plus extra"},
                artifacts=[_locked(app, "fm9g-app", "1.0", ["base", "fam"]),
                           _locked(dep, "fm9g-dep", "2.0+local", ["base", "fam"]),
                           _locked(extra, "fm9g-extra", "3.0", ["fam"], kind="operator-wheel", family="fam")])
    written, skipped = publish(lock, cache)
    assert skipped == [] and len(written) == 2
    return cache, lock


@pytest.fixture
def mirror(published):
    cache, _ = published
    server = make_server(cache.root, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", cache
    server.shutdown()
    server.server_close()


def test_requirements_have_a_hash_for_every_locked_python_file(published):
    cache, lock = published
    base = (cache.root / "published/testprof/requirements.txt").read_text()
    lines = [line for line in base.splitlines() if not line.startswith("#")]
    assert lines == [f"fm9g-app==1.0 --hash=sha256:{lock.artifacts[0].sha256}",
                     f"fm9g-dep==2.0+local --hash=sha256:{lock.artifacts[1].sha256}"]
    family = (cache.root / "published/testprof/fam/requirements.txt").read_text()
    assert f"fm9g-extra==3.0 --hash=sha256:{lock.artifacts[2].sha256}" in family
    assert all("--hash=sha256:" in line for line in family.splitlines() if not line.startswith("#"))


def test_index_links_are_relative_and_point_at_the_content_addressed_files(published):
    cache, lock = published
    for folder in (cache.root / "published/testprof", cache.root / "published/testprof/fam"):
        hrefs = re.findall(r'href="([^"]+)"', (folder / "index.html").read_text())
        assert hrefs and all(not h.startswith(("/", "http")) for h in hrefs)
        for href in hrefs:
            path, _, fragment = href.partition("#sha256=")
            target = (folder / path.replace("%2B", "+")).resolve()
            assert target.is_file() and target.parent.name == fragment == sha256_of(target)


def test_pip_installs_offline_from_the_mirror_with_hashes(mirror, tmp_path):
    base_url, _ = mirror
    url = set_url(base_url + "/", "testprof", "fam")
    assert url == f"{base_url}/published/testprof/fam/"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # only the mirror, whatever this machine's pip is set up with
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--require-hashes",
         "--disable-pip-version-check", "--find-links", url, "-r", url + "requirements.txt",
         "--target", str(tmp_path / "site")],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    installed = sorted(p.name for p in (tmp_path / "site").iterdir() if p.name.endswith(".dist-info"))
    assert installed == ["fm9g_app-1.0.dist-info", "fm9g_dep-2.0+local.dist-info", "fm9g_extra-3.0.dist-info"]


def test_pip_refuses_a_file_that_does_not_match_its_hash(mirror, tmp_path, published):
    base_url, cache = mirror
    _, lock = published
    damaged = cache.path_for(lock.artifacts[1].sha256, lock.artifacts[1].filename)
    damaged.write_bytes(damaged.read_bytes() + b"\0")
    url = f"{base_url}/published/testprof/"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--require-hashes",
         "--disable-pip-version-check", "--find-links", url, "-r", url + "requirements.txt",
         "--target", str(tmp_path / "site")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "HASHES" in result.stderr.upper()


def test_serve_answers_ranges(mirror, published):
    base_url, cache = mirror
    _, lock = published
    artifact = lock.artifacts[1]  # fm9g-dep: a '+' in its name, percent-encoded in the URL
    url = file_url(base_url, artifact.sha256, artifact.filename)
    assert "%2B" in url
    data = cache.path_for(artifact.sha256, artifact.filename).read_bytes()
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    tail = httpx.get(url, headers={"Range": "bytes=10-"})
    assert tail.status_code == 206 and tail.content == data[10:]
    assert tail.headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    middle = httpx.get(url, headers={"Range": "bytes=5-9"})
    assert middle.content == data[5:10]
    suffix = httpx.get(url, headers={"Range": "bytes=-4"})
    assert suffix.content == data[-4:]
    beyond = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    stale = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": '"another-version"'})
    assert stale.status_code == 200 and stale.content == data
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data) and head.content == b""


@pytest.mark.parametrize("path, status", [
    ("/published/testprof", 301),          # to the slash form, so relative links resolve
    ("/published/testprof/", 200),
    ("/../../etc/passwd", 404),
    ("/%2e%2e/%2e%2e/etc/passwd", 404),
    ("/partial/key/file.whl", 404),        # downloads in progress are not served
    ("/.pins.json.tmp", 404),              # nor hidden files
    ("/pins.json", 200),
    ("/nothing-here", 404),
])
def test_serve_paths(mirror, path, status):
    base_url, cache = mirror
    (cache.root / "partial/key").mkdir(parents=True)
    (cache.root / "partial/key/file.whl").write_bytes(b"half")
    (cache.root / ".pins.json.tmp").write_text("{}")
    (cache.root / "pins.json").write_text("{}")
    response = httpx.get(base_url + path, follow_redirects=False)
    assert response.status_code == status
    if status == 301:
        assert response.headers["location"] == path + "/"


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), (":9000", ("127.0.0.1", 9000)), ("8081", ("127.0.0.1", 8081)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8080", ("::1", 8080)),
])
def test_parse_bind(value, expected):
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["localhost:http", "1.2.3.4:70000", ""])
def test_parse_bind_rejects_nonsense(value):
    with pytest.raises(ValueError):
        parse_bind(value)
