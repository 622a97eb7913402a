"""The README's promise, as a property: a mistake in input gives ONE line naming it, exit code 2,
and changes nothing; no traceback ever reaches the operator.

Hypothesis writes config documents (random nesting and scalars, huge numbers, unicode, duplicate
keys, anchors and aliases, wrong types, unknown keys) and argument lists for `config check`,
`plan`, `chat` and `artifacts verify`, and runs them in-process through fm9g_deploy.cli.main
(a subprocess each would make this tier slow). Every run must exit 0 or 2; on 2, stderr is one
line of at most MAX_ERROR_LINE characters; the run's folder (its cwd, cache and state dirs) is
left exactly as it was. Nothing leaves the machine: name resolution is refused, so `chat` can
only fail to connect.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fm9g_deploy.catalog import model_names
from fm9g_deploy.cli import main
from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.errors import MAX_ERROR_LINE

PROMISE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                   derandomize=True, database=None)  # deterministic; writes nothing into the tree

# -- config documents ------------------------------------------------------------------------------

SECTIONS = list(DeploymentConfig.model_fields)
FIELDS = sorted({name for info in DeploymentConfig.model_fields.values()
                 for name in getattr(info.annotation, "model_fields", {})})
#: Scalars written as they would appear in the file (YAML resolves them: numbers, dates, nulls).
RAW_SCALARS = ["1" + "0" * 400, "-1" + "0" * 400, "1" + "0" * 4400, "1e400", "1.0e+400", ".inf", "-.inf",
               ".nan", "0x7fffffffffffffffff", "0o777", "1_000", "2024-13-45", "2024-01-01 10:00:00", "~",
               "null", "yes", "off", "8020", "8100", "65536", "0", "-1", "0.5", "1.5", "16", "4096",
               "cuda121", "cpu", "fm9g-4b", "tiny-random", "/opt/fm9g/models", "opt/models", "../x",
               "http://mirror.example:8080", "ftp://x", "'quoted'", '"a\\nb"', '"\\x1b[31m"', "!!binary aGk=",
               "!!python/object:os.system x", "!!str 5", "<<", "|", ">", "- x", "{", "[", "&", "*", "%TAG"]


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


scalars = st.one_of(
    st.sampled_from(RAW_SCALARS),
    st.integers().map(str),
    st.integers(min_value=1, max_value=5000).map(lambda digits: "9" * digits),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=40).map(_quoted),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(_quoted),
    st.sampled_from(model_names() + ["cpu", "cuda121", "cuda130", "auto", "container", "systemd"]),
)
keys = st.one_of(st.sampled_from(SECTIONS + FIELDS), st.text(min_size=1, max_size=12).map(_quoted),
                 st.sampled_from(["1", "true", "null", "[a]", "{a: 1}", "? x", "<<"]))


@st.composite
def flow_nodes(draw, depth: int = 0):
    """A YAML flow node as text, anchors and aliases included (an alias to an unknown anchor too)."""
    kind = draw(st.sampled_from(["scalar", "scalar", "map", "seq", "alias"] if depth < 4 else ["scalar"]))
    if kind == "scalar":
        node = draw(scalars)
    elif kind == "alias":
        return "*" + draw(st.sampled_from(["a", "b", "nope"]))
    elif kind == "map":
        pairs = draw(st.lists(st.tuples(keys, flow_nodes(depth + 1)), max_size=4))
        node = "{" + ", ".join(f"{key}: {value}" for key, value in pairs) + "}"
    else:
        node = "[" + ", ".join(draw(st.lists(flow_nodes(depth + 1), max_size=4))) + "]"
    anchor = draw(st.sampled_from(["", "", "", "&a ", "&b "]))
    return anchor + node


@st.composite
def config_documents(draw):
    """Block-style sections of known and unknown keys, flow values, and now and then raw noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    lines = []
    for section in draw(st.lists(st.sampled_from(SECTIONS + ["modle", "serving"]), max_size=5)):
        if section == "profile" or draw(st.booleans()) and draw(st.booleans()):
            lines.append(f"{section}: {draw(flow_nodes())}")
            continue
        lines.append(f"{section}:")
        for key in draw(st.lists(st.sampled_from(FIELDS + ["prot", "api_key"]) | keys, max_size=6)):
            lines.append(f"  {key}: {draw(flow_nodes())}")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n", "\n...\n", "\n---\nx: 1\n"]))


# -- running one command against a fresh folder -----------------------------------------------------

def _snapshot(folder: Path) -> dict:
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(folder))] = (stat.st_mode, stat.st_size, stat.st_mtime_ns, digest)
    return state


def _refuse_lookups(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "name resolution is off in this test")


@contextlib.contextmanager
def _folder(files: dict[str, str | bytes] | None = None):
    """A fresh cwd holding ``files``, with the cache and state dirs (absent) inside it."""
    with tempfile.TemporaryDirectory(prefix="fm9g-promise-") as name:
        folder = Path(name)
        for relative, content in (files or {}).items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8", errors="surrogatepass")
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            patch.setenv("FM9G_DEPLOY_CACHE_DIR", str(folder / "cache"))
            patch.setenv("FM9G_DEPLOY_STATE_DIR", str(folder / "state"))
            patch.setenv("HOME", str(folder / "home"))
            for variable in ("FM9G_API_KEY", "FM9G_DEBUG", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                             "http_proxy", "https_proxy", "all_proxy"):
                patch.delenv(variable, raising=False)
            patch.setattr(socket, "getaddrinfo", _refuse_lookups)
            yield folder


def assert_promise(folder: Path, argv: list[str], verdict: str | None = None) -> int:
    """Run ``argv``; ``verdict``: the start of the one failure line a check command may exit 1 with."""
    before = _snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help, --version
            code = exc.code
    stderr = err.getvalue()
    if verdict and code == 1:  # the check ran and found a problem: its documented answer, not ours
        assert stderr.splitlines()[-1].startswith(f"fm9g-deploy: failed: {verdict}"), stderr[-3000:]
        code = 0
    assert code in (0, 2), f"exit {code} for {argv!r}:\n{stderr[-3000:]}"
    if code == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1, f"{len(lines)} lines for {argv!r}:\n{stderr[:3000]}"
        assert lines[0].startswith("fm9g-deploy: error: ") and len(lines[0]) <= MAX_ERROR_LINE, lines[0][:3000]
    assert "Traceback" not in stderr
    assert _snapshot(folder) == before, f"{argv!r} changed the folder"
    return code


# -- the properties --------------------------------------------------------------------------------

KEY_FILES = {"key-good": "s3cret-Key_1\n", "key-empty": "", "key-unicode": "ключ\n", "key-binary": b"\xff\xfe\x00",
             "key-spaces": "two words\n", "dir/inner": "x"}


@PROMISE
@given(document=config_documents(), where=st.sampled_from(["--config", "cwd", "key-file"]),
       key_file=st.sampled_from(sorted(KEY_FILES) + ["dir", "missing", "/"]))
def test_config_check_keeps_the_promise(document, where, key_file):
    files: dict = {"fm9g.yml": document, **KEY_FILES}
    if where == "key-file":  # a plain document naming one of the key files (or a missing one)
        files["fm9g.yml"] = f"serving:\n  api_key_file: {_quoted(key_file)}\n"
    with _folder(files) as folder:
        argv = ["config", "check"] + (["--config", str(folder / "fm9g.yml")] if where != "cwd" else [])
        assert_promise(folder, argv)


def test_a_valid_config_passes():
    """The property is not vacuous: a good config exits 0 (and `plan` accepts it)."""
    with _folder({"fm9g.yml": "model: {name: fm9g-7b}\nserving:\n  port: 8021\n  api_key_file: key\n",
                  "key": "s3cret-Key\n"}) as folder:
        assert assert_promise(folder, ["config", "check"]) == 0
        assert assert_promise(folder, ["plan", "--config", "fm9g.yml", "--gpus", "2xH100"]) == 0


gpu_specs = st.one_of(
    st.builds(lambda count, name: f"{count}x{name}",
              st.sampled_from(["0", "1", "8", "64", "65", "-1", "9" * 30, "1e3", "", "x"]),
              st.sampled_from(["H100", "A100-80GB", "40GiB", "0.5GiB", "1e400GiB", "9" * 400 + "GiB",
                               "nanGiB", "infGiB", "80GB", "B100", "", " H100", "ＨＡ100"])),
    st.text(max_size=30),
)


@PROMISE
@given(model=st.sampled_from(model_names()) | st.text(max_size=20), gpus=gpu_specs,
       document=st.none() | config_documents(), json_output=st.booleans())
def test_plan_keeps_the_promise(model, gpus, document, json_output):
    with _folder({"fm9g.yml": document} if document is not None else {}) as folder:
        argv = ["plan", "--model", model, "--gpus", gpus] + (["--json"] if json_output else [])
        if document is not None:
            argv += ["--config", "fm9g.yml"]
        assert_promise(folder, argv)


urls = st.one_of(
    st.sampled_from(["http://127.0.0.1:1", "http://gw.example:8020/v1", "https://[::1]:8020", "http://[::1",
                     "http://host:99999", "http://host:-1", "http://", "127.0.0.1:8020", "ftp://x", "",
                     "http://ex\u2100mple.com", "http://a b", "http://host/\x00", "http://\udcff"]),
    st.text(max_size=40),
    st.text(max_size=20).map(lambda tail: "http://" + tail),
)
floats_typed = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", "0.7", "2", "1e9", "x", ""]),
                         st.floats(allow_nan=False, allow_infinity=False, min_value=1, max_value=1e6).map(repr))


@st.composite
def chat_argv(draw):
    argv = ["chat", "--url", draw(urls)]
    options = {
        "--message": st.text(max_size=30),
        "--model": st.sampled_from(["9g", ""]) | st.text(max_size=10),
        "--max-tokens": st.sampled_from(["0", "1", "-5", "9" * 30, "1.5", "x"]) | st.integers().map(str),
        "--temperature": floats_typed,
        "--timeout": floats_typed,
        "--api-key-file": st.sampled_from(sorted(KEY_FILES) + ["dir", "missing"]),
        "--api-key": st.sampled_from(["s3cret", "ключ", ""]),
    }
    for option in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4)):
        argv += [option, draw(options[option])]
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.sampled_from(["--bogus", "extra", "--url", "-h"])))
    return argv


@PROMISE
@given(argv=chat_argv(), env_key=st.none() | st.sampled_from(["s3cret-Key", "ключ", " ", "a\tb", "x" * 5000]))
def test_chat_keeps_the_promise(argv, env_key):
    with _folder(KEY_FILES) as folder:
        if env_key is not None:
            os.environ["FM9G_API_KEY"] = env_key  # the folder's MonkeyPatch context restores it
        code = assert_promise(folder, argv)
        assert code == 2 or "-h" in argv  # nothing answers, so no chat can succeed


@PROMISE
@given(cache=st.sampled_from(["none", "missing", "file", "empty-dir", "cwd", "text"]), text=st.text(max_size=30),
       profiles=st.lists(st.sampled_from(["cpu", "cuda121", "nope", "../x", ""]) | st.text(max_size=10),
                         max_size=2),
       document=st.none() | config_documents())
def test_artifacts_verify_keeps_the_promise(cache, text, profiles, document):
    files: dict = {"a-file": "not a cache\n"}
    if document is not None:
        files["fm9g.yml"] = document
    with _folder(files) as folder:
        (folder / "empty").mkdir()
        argv = ["artifacts", "verify"]
        argv += {"none": [], "missing": ["--cache-dir", "no/such/dir"], "file": ["--cache-dir", "a-file"],
                 "empty-dir": ["--cache-dir", "empty"], "cwd": ["--cache-dir", "."],
                 "text": ["--cache-dir", text]}[cache]
        for profile in profiles:
            argv += ["--profile", profile]
        if document is not None:
            argv += ["--config", "fm9g.yml"]
        # `artifacts verify` exits 1 when the cache lacks a locked file: the verdict it exists for.
        assert_promise(folder, argv, verdict="the cache has ")


def test_strategies_reach_the_interesting_documents():
    """The generator does write what the defects were about (a guard against a silent narrowing)."""
    seen = {"duplicate": False, "alias": False, "huge": False}

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(config_documents())
    def look(document):
        lines = [line.split(":")[0] for line in document.splitlines() if line.startswith("  ")]
        seen["duplicate"] |= len(lines) != len(set(lines))
        seen["alias"] |= "*a" in document
        seen["huge"] |= "0" * 400 in document or "9" * 400 in document

    look()
    assert all(seen.values()), seen
