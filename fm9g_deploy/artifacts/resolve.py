"""Resolve a stack profile into exact files with pip's own resolver, for the hosts' Python/platform.

pip runs as `pip install --dry-run --report` with the target's --python-version, --platform and
--abi, so it picks the wheels the hosts need rather than the ones this machine would. pip still
evaluates environment markers (`; python_version < "3.11"`) against the interpreter it runs in, so
it runs through a small shim that hands its marker code the target's values. The operator's pip
configuration (extra indexes, find-links, constraints) is kept out: a lock comes from the
profile's index alone. pip reads each wheel's dependencies from the index's metadata files (PEP 658)
and, where an index publishes none, from the wheel's own metadata through HTTP range requests
(fast-deps) rather than by downloading the whole wheel (GBs for a CUDA stack); the sha256 then comes
from the index, which must publish it. A conda profile's env packages are locked by conda itself
(fm9g_deploy/artifacts/conda.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy import __version__
from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.conda import lock_conda_packages
from fm9g_deploy.artifacts.lock import BASE_SET, Lock, LockedArtifact, LockTarget
from fm9g_deploy.artifacts.sources import find_local
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.profiles import Profile

#: Runs pip with the target hosts' marker environment (JSON in FM9G_TARGET_MARKERS).
PIP_SHIM = """\
import json, os, runpy, sys
from pip._vendor.packaging import markers
_target = json.loads(os.environ["FM9G_TARGET_MARKERS"])
_default = markers.default_environment
def _target_environment():
    values = _default()
    values.update(_target)
    return values
markers.default_environment = _target_environment
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""

#: pip settings from the environment that are about the network, not about where packages come from.
_PIP_NETWORK_ENV = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
                    "PIP_RETRIES", "PIP_TIMEOUT"}


@dataclass
class ResolvedFile:
    name: str
    version: str
    url: str
    sha256: str
    requires_dist: list[str] = field(default_factory=list)
    requested: bool = False
    requested_extras: list[str] = field(default_factory=list)

    @property
    def filename(self) -> str:
        from fm9g_deploy.profiles import filename_from_url

        return filename_from_url(self.url)


def canonical(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503: runs of -_. become -, lower case): the one
    normalisation every comparison of package names in fm9g-deploy goes through."""
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def run_pip_resolve(profile: Profile, requirements: list[str], *, index_url: str | None = None,
                    find_links: list[str] | None = None) -> list[ResolvedFile]:
    """pip's resolution of ``requirements`` (plus the profile's constraints) for the profile's target."""
    with tempfile.TemporaryDirectory(prefix="fm9g-resolve-") as scratch:
        report = Path(scratch) / "report.json"
        argv = [sys.executable, "-c", PIP_SHIM, "install", "--dry-run", "--ignore-installed",
                "--only-binary=:all:", "--no-input", "--quiet", "--disable-pip-version-check",
                "--python-version", profile.env.python, "--implementation", "cp", "--abi", profile.abi,
                "--target", str(Path(scratch) / "target"), "--report", str(report)]
        for platform in profile.pip_platforms():
            argv += ["--platform", platform]
        if find_links is not None:
            argv += ["--no-index"] + [f"--find-links={link}" for link in find_links]
        else:
            # Not for find-links pages: they seldom carry hashes, which pip then takes from the download.
            argv += ["--index-url", index_url or profile.index_url, "--use-feature=fast-deps"]
        if profile.python_packages.constraints:
            constraints = Path(scratch) / "constraints.txt"
            constraints.write_text("\n".join(profile.python_packages.constraints) + "\n")
            argv += ["--constraint", str(constraints)]
        argv += requirements
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("PIP_") or key in _PIP_NETWORK_ENV}
        env.update(PIP_CONFIG_FILE=os.devnull, FM9G_TARGET_MARKERS=json.dumps(profile.marker_environment()))
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
            reason = (errors[-1] if errors else (result.stderr.strip().splitlines() or ["no output"])[-1])
            raise OperationFailed(f"pip could not resolve profile {profile.name}: {reason[:400]}")
        data = json.loads(report.read_text())
    return [_resolved(item) for item in data["install"]]


def _resolved(item: dict) -> ResolvedFile:
    info = item["download_info"]
    hashes = info.get("archive_info", {}).get("hashes") or {}
    if "sha256" not in hashes:
        legacy = info.get("archive_info", {}).get("hash", "")
        if legacy.startswith("sha256="):
            hashes = {"sha256": legacy.split("=", 1)[1]}
    metadata = item["metadata"]
    if "sha256" not in hashes:
        raise OperationFailed(f"pip reported no sha256 for {metadata['name']} ({info.get('url')}); "
                              "use an index that publishes hashes")
    return ResolvedFile(name=metadata["name"], version=metadata["version"], url=info["url"],
                        sha256=hashes["sha256"], requires_dist=list(metadata.get("requires_dist") or []),
                        requested=bool(item.get("requested")),
                        requested_extras=list(item.get("requested_extras") or []))


def prune_excluded(files: list[ResolvedFile], excluded: list[str], markers: dict[str, str]) -> list[ResolvedFile]:
    """Drop the excluded packages and whatever only they needed."""
    if not excluded:
        return files
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = {**default_environment(), **markers}
    by_name = {canonical(f.name): f for f in files}
    roots = [(canonical(f.name), frozenset(f.requested_extras)) for f in files if f.requested]

    def reachable(skip: set[str]) -> set[str]:
        seen: set[tuple[str, frozenset]] = set()
        stack = list(roots)
        while stack:
            state = stack.pop()
            name, extras = state
            if name in skip or name not in by_name or state in seen:
                continue
            seen.add(state)
            for line in by_name[name].requires_dist:
                requirement = Requirement(line)
                if requirement.marker and not any(
                        requirement.marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""})):
                    continue
                stack.append((canonical(requirement.name), frozenset(requirement.extras)))
        return {name for name, _ in seen}

    skip = {canonical(name) for name in excluded}
    only_theirs = reachable(set()) - reachable(skip)
    return [f for f in files if canonical(f.name) not in skip | only_theirs]


def _pinned_requirements(profile: Profile, search: list[Path], cache: Cache,
                         sizes: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    """Requirement strings for the pinned files: the file itself when at hand, else its stand-in.

    The sizes of the files at hand go into ``sizes`` (sha256 -> bytes).
    """
    requirements: list[str] = []
    stand_ins: dict[str, str] = {}
    for pinned in profile.python_packages.pinned_files:
        local = (cache.path_for(pinned.sha256, pinned.filename)
                 if cache.has(pinned.sha256, pinned.filename) else find_local(pinned.filename, pinned.sha256, search))
        if local is not None:
            requirements.append(str(local))
            sizes[pinned.sha256] = local.stat().st_size
        elif pinned.stand_in:
            requirements.append(pinned.stand_in)
            stand_ins[pinned.name] = pinned.stand_in
        else:
            raise UserError(f"{pinned.filename} (sha256 {pinned.sha256[:12]}…) is needed to lock profile "
                            f"{profile.name} but is not in the cache or any search directory; pass "
                            "--from DIR with the directory that holds it")
    return requirements, stand_ins


def _to_artifacts(files: list[ResolvedFile], profile: Profile, set_name: str, *,
                  operator_sha: str | None = None, family: str | None = None) -> list[LockedArtifact]:
    pinned = {canonical(p.name): p for p in profile.python_packages.pinned_files}
    artifacts = []
    for file in files:
        key = canonical(file.name)
        if operator_sha and file.sha256 == operator_sha:
            artifacts.append(LockedArtifact(name=file.name, version=file.version, filename=file.filename, url=None,
                                            sha256=file.sha256, kind="operator-wheel", sets=[set_name], family=family))
            continue
        if key in pinned:
            pin = pinned[key]
            if file.url.startswith("file:") and file.sha256 != pin.sha256:
                raise OperationFailed(f"{file.filename} hashed to {file.sha256}, not the pinned {pin.sha256}")
            artifacts.append(LockedArtifact(name=file.name, version=pin.version, filename=pin.filename, url=pin.url,
                                            sha256=pin.sha256, size=pin.size, kind="wheel", sets=[set_name]))
            continue
        if not file.url.startswith(("http://", "https://")):
            raise OperationFailed(f"{file.name} resolved to a local file ({file.url}); locks hold downloadable "
                                  "files only: add it to the profile's pinned_files with its URL")
        artifacts.append(LockedArtifact(name=file.name, version=file.version, filename=file.filename, url=file.url,
                                        sha256=file.sha256, kind="wheel", sets=[set_name]))
    return artifacts


def _merge(groups: list[list[LockedArtifact]]) -> list[LockedArtifact]:
    """One entry per file (sha256), listing every set it belongs to."""
    merged: dict[str, LockedArtifact] = {}
    for group in groups:
        for artifact in group:
            if artifact.sha256 in merged:
                existing = merged[artifact.sha256]
                existing.sets = existing.sets + [s for s in artifact.sets if s not in existing.sets]
            else:
                merged[artifact.sha256] = artifact.model_copy()
    return list(merged.values())


def lookup_sizes(artifacts: list[LockedArtifact], index_url: str) -> None:
    """Fill in sizes from the index's JSON API (PEP 691/700); leaves None where it cannot tell."""
    import httpx

    wanted = [a for a in artifacts if a.size is None and a.url and a.kind == "wheel"]
    names = sorted({canonical(a.name) for a in wanted})

    def project_sizes(client: httpx.Client, name: str) -> dict[str, int]:
        try:
            response = client.get(f"{index_url.rstrip('/')}/{name}/",
                                  headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
                return {}
            return {f["hashes"].get("sha256"): f["size"] for f in response.json().get("files", [])
                    if isinstance(f.get("size"), int)}
        except (httpx.HTTPError, ValueError, KeyError, AttributeError, TypeError):  # any odd answer: sizes unknown
            return {}

    with httpx.Client(timeout=30, follow_redirects=True,
                      headers={"User-Agent": f"fm9g-deploy/{__version__}"}) as client, \
            ThreadPoolExecutor(max_workers=8) as pool:
        sizes: dict[str, int] = {}
        for found in pool.map(lambda n: project_sizes(client, n), names):
            sizes.update(found)
    for artifact in wanted:
        artifact.size = sizes.get(artifact.sha256)


def build_lock(profile: Profile, cache: Cache, *, search: list[Path], index_url: str | None = None,
               find_links: list[str] | None = None, on_step=lambda message: None) -> Lock:
    """Resolve ``profile`` (and each registered operator wheel) into a Lock."""
    packages = profile.python_packages
    known_sizes: dict[str, int] = {}
    pinned, stand_ins = _pinned_requirements(profile, search, cache, known_sizes)
    base_requirements = pinned + list(packages.requirements)
    markers = profile.marker_environment()

    def resolve(requirements: list[str]) -> list[ResolvedFile]:
        files = run_pip_resolve(profile, requirements, index_url=index_url, find_links=find_links)
        return prune_excluded(files, packages.exclude, markers)

    # First: it needs the conda channel, and fails fast (one line) where this machine cannot reach it.
    conda_packages = lock_conda_packages(profile, cache, search=search, on_step=on_step)
    on_step(f"resolving {profile.name} for Python {profile.env.python} on {profile.platform}")
    groups = [_to_artifacts(resolve(base_requirements), profile, BASE_SET)]
    sets = {BASE_SET: "the profile's Python packages" + (" (vLLM included)" if profile.vllm.source == "index" else "")}
    unregistered: list[str] = []
    if profile.vllm.source == "operator":
        registered = cache.operator_wheels()
        for family in profile.vllm.families:
            record = registered.get(family)
            if not record:
                unregistered.append(family)
                continue
            wheel = cache.path_for(record["sha256"], record["filename"])
            if not wheel.is_file():
                raise UserError(f"the registered {family} vLLM wheel is missing from the cache ({wheel}); "
                                f"register it again with `fm9g-deploy artifacts add FILE --family {family}`")
            on_step(f"resolving {profile.name} with the {family} vLLM wheel ({record['sha256'][:12]}…)")
            files = resolve(base_requirements + [str(wheel)])
            groups.append(_to_artifacts(files, profile, family, operator_sha=record["sha256"], family=family))
            sets[family] = f"base plus the operator's vLLM wheel for {family} models and its dependencies"

    artifacts = _merge(groups)
    artifacts += [LockedArtifact(name=i.name, version=i.version, filename=i.filename, url=i.url, sha256=i.sha256,
                                 size=i.size, kind="installer") for i in profile.installers]
    for artifact in artifacts:
        if artifact.size is None:
            artifact.size = known_sizes.get(artifact.sha256)
    if find_links is None:
        on_step("looking up file sizes")
        lookup_sizes(artifacts, index_url or profile.index_url)
    order = {"installer": 0, "operator-wheel": 1, "wheel": 2}
    artifacts.sort(key=lambda a: (order[a.kind], canonical(a.name), a.version, a.filename, a.sha256))
    # The conda packages after the installer, in conda's link order (an explicit spec's order).
    installers = sum(1 for a in artifacts if a.kind == "installer")
    artifacts[installers:installers] = conda_packages
    pip_version = _pip_version()
    return Lock(
        profile=profile.name,
        generated_by=f"fm9g-deploy {__version__} (pip {pip_version})",
        target=LockTarget(python=profile.env.python, abi=profile.abi, platforms=profile.pip_platforms(),
                          markers=markers),
        index_url=index_url or profile.index_url,
        requirements=[f"{p.name}=={p.version}" for p in packages.pinned_files] + list(packages.requirements),
        constraints=list(packages.constraints),
        excluded=list(packages.exclude),
        stand_ins=stand_ins,
        sets=sets,
        unregistered_families=unregistered,
        artifacts=artifacts,
    )


def _pip_version() -> str:
    try:
        from importlib.metadata import version

        return version("pip")
    except Exception:  # noqa: BLE001 - only a label in the lock
        return "unknown"
