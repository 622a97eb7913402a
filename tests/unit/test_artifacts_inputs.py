"""Bad inputs to the artifacts layer: a cache dir that is a file or missing, damaged pins,
wheel registrations and locks (wrong top-level type, wrong field types, invalid UTF-8). Each is
one line naming the file and the fix, exit 2, nothing changed, no traceback."""

from __future__ import annotations

import json

import pytest

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.fetch import fetch
from fm9g_deploy.artifacts.lock import load_lock, lock_path
from fm9g_deploy.artifacts.verify import verify
from fm9g_deploy.errors import UserError
from tests.conftest import run_cli

SHA = "a" * 64
PIN = {"filename": "9G7B_MHA.tar", "sha256": SHA, "size": 4096, "source": "test", "pinned_at": "now"}
WHEEL = {"filename": "vllm-0.5.0-cp310-cp310-linux_x86_64.whl", "sha256": SHA, "size": 10, "name": "vllm",
         "version": "0.5.0", "added_at": "now"}


def one_error_line(result) -> str:
    """The single stderr line of a refused command (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fm9g-deploy: error: ")
    return lines[0]


# -- the cache dir itself ---------------------------------------------------------------------------

def test_cli_cache_dir_that_is_a_file_says_so(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    line = one_error_line(run_cli("artifacts", "verify", "--cache-dir", str(afile), timeout=120))
    assert f"the cache dir {afile} is a file" in line and "pass a directory with --cache-dir" in line
    assert "pins.json" not in line and "remove the file" not in line
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("below", ["", "sub"])
def test_every_cache_use_refuses_a_file_as_the_cache(tmp_path, below):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    cache = Cache(afile / below if below else afile)
    for use in (cache.pins, cache.operator_wheels, lambda: verify(cache, []),
                lambda: fetch([], cache, search=[]), lambda: cache.save_pin("m", PIN),
                lambda: cache.store(afile, SHA, "x.whl")):
        with pytest.raises(UserError, match="pass a directory with --cache-dir") as caught:
            use()
        assert str(afile) in str(caught.value) and "\n" not in str(caught.value)
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("made", [False, True])
def test_cli_verify_of_a_missing_or_empty_cache_is_an_error(tmp_path, made):
    cache_dir = tmp_path / "nope"
    if made:
        cache_dir.mkdir()
    line = one_error_line(run_cli("artifacts", "verify", "--cache-dir", str(cache_dir), timeout=120))
    assert str(cache_dir) in line and "artifacts fetch" in line
    assert ("holds no files" if made else "does not exist") in line
    assert cache_dir.exists() == made  # nothing created


def test_a_cache_whose_files_are_all_gone_reports_them_missing(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.save_pin("fm9g-7b", PIN)  # pinned, but sha256/ was deleted: missing (exit 1), not "empty"
    report = verify(cache, [])
    assert not report.ok and len(report.missing) == 1 and "model fm9g-7b" in report.missing[0]


# -- pins.json and operator-wheels.json ---------------------------------------------------------------

DAMAGED = [
    pytest.param(b"[1, 2]", "its top level is a list", id="top-level-list"),
    pytest.param(b'"models"', "its top level is a string", id="top-level-string"),
    pytest.param(b"42", "its top level is a number", id="top-level-number"),
    pytest.param(b"null", "its top level is null", id="top-level-null"),
    pytest.param(b"\xff\xfe{}", "not UTF-8", id="invalid-utf8"),
    pytest.param(b"{", "cannot read", id="invalid-json"),
]


def registry(name: str) -> tuple[str, str, dict, str]:
    """(top-level key, reader method, a good record, words of the fix) of a registry file."""
    if name == "pins.json":
        return "models", "pins", PIN, "artifacts fetch --profile PROFILE --model MODEL"
    return "families", "operator_wheels", WHEEL, "artifacts add FILE --family FAMILY"


@pytest.mark.parametrize("name", ["pins.json", "operator-wheels.json"])
@pytest.mark.parametrize("content, words", DAMAGED)
def test_a_damaged_registry_file_is_one_line_naming_it_and_the_fix(tmp_path, name, content, words):
    key, reader, _, fix = registry(name)
    cache = Cache(tmp_path / "cache")
    cache.root.mkdir()
    (cache.root / name).write_bytes(content)
    with pytest.raises(UserError) as caught:
        getattr(cache, reader)()
    message = str(caught.value)
    assert "\n" not in message and str(cache.root / name) in message and words in message and fix in message
    assert (cache.root / name).read_bytes() == content  # left for the operator to look at


@pytest.mark.parametrize("name", ["pins.json", "operator-wheels.json"])
@pytest.mark.parametrize("change, words", [
    (lambda key, record: {key: [record]}, "is a list, not an object"),
    (lambda key, record: {key: {"x": "text"}}, "is a string, not an object"),
    (lambda key, record: {key: {"x": {**record, "sha256": 5}}}, "no sha256"),
    (lambda key, record: {key: {"x": {k: v for k, v in record.items() if k != "sha256"}}}, "no sha256"),
    (lambda key, record: {key: {"x": {**record, "filename": "../../etc/passwd"}}}, "no plain filename"),
    (lambda key, record: {key: {"x": {**record, "filename": ["a"]}}}, "no plain filename"),
    (lambda key, record: {key: {"x": {**record, "size": "big"}}}, "size"),
    (lambda key, record: {key: {"x": {**record, "size": -1}}}, "size"),
])
def test_wrong_field_types_in_a_registry_file_are_one_line(tmp_path, name, change, words):
    key, reader, record, fix = registry(name)
    cache = Cache(tmp_path / "cache")
    cache.root.mkdir()
    (cache.root / name).write_text(json.dumps(change(key, record)))
    with pytest.raises(UserError) as caught:
        getattr(cache, reader)()
    message = str(caught.value)
    assert "\n" not in message and str(cache.root / name) in message and words in message and fix in message


def test_a_good_registry_file_reads_back(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.save_pin("fm9g-7b", PIN)
    cache.save_operator_wheel("fm9g-2b-8b", WHEEL)
    assert cache.pins() == {"fm9g-7b": PIN}
    assert cache.operator_wheels() == {"fm9g-2b-8b": WHEEL}


def test_cli_verify_with_a_damaged_pins_file_is_one_line(tmp_path):
    cache_dir = tmp_path / "cache"
    (cache_dir / "sha256" / SHA).mkdir(parents=True)
    (cache_dir / "sha256" / SHA / "x.whl").write_bytes(b"x")
    (cache_dir / "pins.json").write_text(json.dumps({"models": {"fm9g-7b": 1}}))
    line = one_error_line(run_cli("artifacts", "verify", "--cache-dir", str(cache_dir), timeout=120))
    assert str(cache_dir / "pins.json") in line and "'fm9g-7b'" in line and "--model MODEL" in line


# -- locks --------------------------------------------------------------------------------------------

def committed_lock() -> dict:
    return json.loads(lock_path("cpu").read_text(encoding="utf-8"))


@pytest.mark.parametrize("content, words", [
    pytest.param(b"[1, 2]", "its top level is a list", id="top-level-list"),
    pytest.param(b'"lock"', "not a JSON object", id="top-level-string"),
    pytest.param(b"7", "not a JSON object", id="top-level-number"),
    pytest.param(b"null", "not a JSON object", id="top-level-null"),
    pytest.param(b"\xff{}", "not UTF-8", id="invalid-utf8"),
    pytest.param(b"{", "cannot read lock", id="invalid-json"),
])
def test_a_damaged_lock_names_the_file_and_how_to_regenerate_it(tmp_path, content, words):
    bad = tmp_path / "cpu.json"
    bad.write_bytes(content)
    with pytest.raises(UserError) as caught:
        load_lock("cpu", bad)
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and words in message
    assert message.endswith("regenerate it with `fm9g-deploy artifacts lock --profile cpu`")


@pytest.mark.parametrize("change, where", [
    (lambda d: d.__setitem__("sets", ["base"]), "sets:"),
    (lambda d: d.__setitem__("artifacts", {"a": 1}), "artifacts:"),
    (lambda d: d["artifacts"].__setitem__(0, "wheel"), "artifacts.0:"),
    (lambda d: d["artifacts"][0].__setitem__("size", "big"), "artifacts.0.size:"),
    (lambda d: d["artifacts"][0].__setitem__("filename", "../x.whl"), "artifacts.0.filename:"),
    (lambda d: d["artifacts"][0].__setitem__("sets", ["nope"]), "unknown install set"),
    (lambda d: d.pop("profile"), "profile: is missing"),
    (lambda d: d.__setitem__("surprise", 1), "surprise: is not a lock field"),
])
def test_wrong_field_types_in_a_lock_are_one_line(tmp_path, change, where):
    data = committed_lock()
    change(data)
    bad = tmp_path / "cpu.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        load_lock("cpu", bad)
    message = str(caught.value)
    assert "\n" not in message and where in message and "inventory/fm9g.yml" not in message
    assert message.endswith("regenerate it with `fm9g-deploy artifacts lock --profile cpu`")


def test_cli_fetch_with_a_list_as_lock_is_one_line_and_changes_nothing(tmp_path):
    bad = tmp_path / "lock.json"
    bad.write_text("[]")
    cache_dir = tmp_path / "cache"
    line = one_error_line(run_cli("artifacts", "fetch", "--profile", "cpu", "--lock", str(bad),
                                  "--cache-dir", str(cache_dir), timeout=120))
    assert str(bad) in line and "artifacts lock --profile cpu" in line
    assert not cache_dir.exists() and bad.read_text() == "[]"


def test_cli_lock_output_that_is_a_directory_is_refused_before_resolving(tmp_path):
    line = one_error_line(run_cli("artifacts", "lock", "--profile", "cpu", "--output", str(tmp_path),
                                  "--cache-dir", str(tmp_path / "cache"), timeout=120))
    assert f"--output {tmp_path} is a directory" in line
