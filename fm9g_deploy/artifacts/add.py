"""Put files the operator brings into the cache: the FM9G vLLM wheels and model tarballs.

The two vLLM wheel families share one file name, so a wheel is registered under its family and
told apart by sha256 only; the lock then records that exact file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fm9g_deploy.artifacts.cache import Cache, now_iso, sha256_file
from fm9g_deploy.artifacts.fetch import pin_warning
from fm9g_deploy.artifacts.resolve import canonical
from fm9g_deploy.artifacts.wheels import wheel_metadata
from fm9g_deploy.errors import UserError


@dataclass(frozen=True)
class Added:
    path: Path
    sha256: str
    #: Lines worth telling the operator (what was replaced, what to run next, TOFU warnings).
    notes: tuple[str, ...] = ()


def _readable_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path} is not a file; pass the path of the file to add")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); fix its permissions or pass another "
                        "copy") from None


def add_operator_wheel(cache: Cache, path: Path, family: str, *, replace: bool = False) -> Added:
    from fm9g_deploy.profiles import load_profile, operator_families

    families = operator_families()
    if family not in families:
        raise UserError(f"unknown vLLM wheel family {family!r}; choose one of {', '.join(sorted(families))}")
    _readable_file(path)
    name, version = wheel_metadata(path)
    profile = load_profile(families[family])
    expected_name, expected_version = profile.vllm.filename.split("-")[:2]
    if canonical(name) != canonical(expected_name) or version != expected_version:
        raise UserError(f"{path.name} holds {name} {version}, but the {profile.name} profile expects "
                        f"{expected_name} {expected_version} ({profile.vllm.filename}); pass the FM9G team's "
                        "prebuilt wheel")
    sha256 = sha256_file(path)
    registered = cache.operator_wheels()
    for other, record in registered.items():
        if other != family and record["sha256"] == sha256:
            raise UserError(f"this file (sha256 {sha256[:12]}…) is already registered as the {other} wheel; the "
                            "two families' wheels differ: check which file you picked")
    notes: list[str] = []
    current = registered.get(family)
    if current and current["sha256"] != sha256:
        if not replace:
            raise UserError(f"a different {family} wheel is registered (sha256 {current['sha256'][:12]}…); pass "
                            "--replace to register this one instead")
        notes.append(f"replaced the {family} wheel {current['sha256'][:12]}… (its file stays in the cache)")
    # Stored under the name pip expects, whatever the download was renamed to.
    stored = cache.store(path, sha256, profile.vllm.filename)
    cache.save_operator_wheel(family, {"filename": profile.vllm.filename, "sha256": sha256,
                                       "size": stored.stat().st_size, "name": name, "version": version,
                                       "added_at": now_iso()})
    notes.append(f"now lock it: fm9g-deploy artifacts lock --profile {profile.name}")
    return Added(stored, sha256, tuple(notes))


def add_model_tarball(cache: Cache, path: Path, model: str) -> Added:
    from fm9g_deploy.catalog import get_model, model_names

    if model not in model_names():
        raise UserError(f"unknown model {model!r}; choose one of {', '.join(model_names())}")
    _readable_file(path)
    spec = get_model(model)
    filename = spec.tarball or path.name
    sha256 = sha256_file(path)
    pin = cache.pins().get(model)
    notes: list[str] = []
    if pin and pin["sha256"] != sha256:
        raise UserError(f"{path} (sha256 {sha256[:12]}…) does not match the {model} tarball pinned on "
                        f"{pin.get('pinned_at', 'first fetch')} ({pin['sha256'][:12]}…); if the publisher really "
                        f"replaced it, delete the {model} entry from {cache.root / 'pins.json'}")
    stored = cache.store(path, sha256, filename)
    if not pin:
        cache.save_pin(model, {"filename": filename, "sha256": sha256, "size": stored.stat().st_size,
                               "source": f"added from {path.name}", "pinned_at": now_iso()})
        notes.append("warning: " + pin_warning(model, filename, sha256))
    return Added(stored, sha256, tuple(notes))
