"""Lock a conda profile's env packages: the exact files `conda create` would link, with their sha256.

Hosts never reach conda-forge: they create the env offline from an explicit spec of these files
on the mirror. The files are chosen here, on the control node, by conda itself: the profile's
locked Miniforge installer is installed into a temporary directory and its conda answers

    conda create --dry-run --json --override-channels --channel CHANNEL --platform PLATFORM
                 --prefix SCRATCH SPECS...

with an empty package cache (CONDA_PKGS_DIRS), so every package it would link is also one it would
fetch: the JSON's actions.LINK lists them in link order (name, version, build only) and
actions.FETCH holds each one's channel record (url, sha256, size, fn). Nothing of the operator's
conda setup is read (HOME points into the scratch directory; CONDA_* settings are dropped but for
the network ones), so a lock comes from the profile's channel alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from fm9g_deploy.artifacts.cache import Cache
from fm9g_deploy.artifacts.fetch import FetchItem, fetch
from fm9g_deploy.artifacts.lock import CONDA_SUFFIXES, LockedArtifact
from fm9g_deploy.errors import OperationFailed, UserError
from fm9g_deploy.profiles import CondaSpec, InstallerFile, Profile, filename_from_url

#: conda settings from the environment that are about the network, not about where packages come from.
_CONDA_NETWORK_ENV = {"CONDA_SSL_VERIFY", "CONDA_REMOTE_CONNECT_TIMEOUT_SECS", "CONDA_REMOTE_READ_TIMEOUT_SECS",
                      "CONDA_REMOTE_MAX_RETRIES", "CONDA_REMOTE_BACKOFF_FACTOR"}
#: conda's errors that mean the channel could not be reached (rather than the specs not resolving).
_UNREACHABLE = {"CondaHTTPError", "CondaSSLError", "ProxyError", "ConnectionError"}


def _dist_name(filename: str) -> str:
    for suffix in CONDA_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _link_key(record: dict) -> str:
    """name-version-build of a LINK record (its dist_name; older conda spelled the build otherwise)."""
    if record.get("dist_name"):
        return str(record["dist_name"]).rsplit("::", 1)[-1]
    build = record.get("build_string") or record.get("build")
    return f"{record.get('name')}-{record.get('version')}-{build}"


def _fetch_key(record: dict) -> str:
    filename = record.get("fn") or (filename_from_url(record["url"]) if record.get("url") else "")
    if filename:
        return _dist_name(filename)
    return f"{record.get('name')}-{record.get('version')}-{record.get('build')}"


def conda_artifacts(dry_run: dict) -> list[LockedArtifact]:
    """The conda packages of `conda create --dry-run --json`'s answer, in the order conda links them.

    Each package of actions.LINK is taken with its actions.FETCH record (url, sha256, size, fn);
    a LINK record that carries url and sha256 itself is taken as it is. OperationFailed when a
    package has no sha256 or no downloadable record, naming it.
    """
    actions = dry_run.get("actions") if isinstance(dry_run, dict) else None
    if isinstance(actions, list) and len(actions) == 1:  # one action group per prefix: one prefix here
        actions = actions[0]
    if not isinstance(actions, dict):
        raise OperationFailed("conda's dry run reported no actions; it is not the answer of `conda create --dry-run "
                              "--json`")
    fetch_records = {_fetch_key(record): record for record in actions.get("FETCH") or []}
    link_records = actions.get("LINK") or []
    if not link_records:
        raise OperationFailed("conda's dry run would link no package; check the profile's conda.specs")
    artifacts: list[LockedArtifact] = []
    for link in link_records:
        key = _link_key(link)
        record = link if link.get("url") and "sha256" in link else fetch_records.get(key)
        if record is None:
            raise OperationFailed(f"conda would link {key} but listed no download of it (its package cache was "
                                  "not empty?); the lock needs every package's url and sha256")
        url = record.get("url") or ""
        if not url.startswith(("http://", "https://")):
            raise OperationFailed(f"conda's record of {key} has no download URL ({url or 'none'}); locks hold "
                                  "downloadable files only")
        sha256 = record.get("sha256")
        if not sha256:
            raise OperationFailed(f"the channel gave no sha256 for the conda package {key} ({url}); conda-forge "
                                  "publishes sha256 for every package: lock from a channel that does")
        artifacts.append(LockedArtifact(
            name=record.get("name") or link.get("name"), version=str(record.get("version") or link.get("version")),
            filename=record.get("fn") or filename_from_url(url), url=url, sha256=sha256,
            size=record.get("size") if isinstance(record.get("size"), int) else None, kind="conda"))
    return artifacts


def dry_run_argv(conda: Path, spec: CondaSpec, prefix: Path) -> list[str]:
    """The conda command that tells what `conda create` of ``spec`` would link (an argv, never a shell line)."""
    return [str(conda), "create", "--dry-run", "--json", "--override-channels", "--channel", spec.channel_url,
            "--platform", spec.platform, "--prefix", str(prefix), *spec.specs]


def conda_env(home: Path, pkgs_dir: Path) -> dict[str, str]:
    """This process's environment for the scratch conda: none of the operator's conda setup, an empty
    package cache, and HOME in the scratch directory (no ~/.condarc read, no environments.txt written)."""
    env = {key: value for key, value in os.environ.items()
           if not key.upper().startswith(("CONDA", "_CONDA", "_CE_", "MAMBA", "PYTHONPATH", "PYTHONHOME"))
           or key in _CONDA_NETWORK_ENV}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), CONDA_PKGS_DIRS=str(pkgs_dir))
    return env


def failure(profile: Profile, returncode: int, stdout: str, stderr: str) -> OperationFailed:
    """The one-line error of a failed dry run: an unreachable channel says what the lock needs."""
    spec = profile.conda
    try:
        answer = json.loads(stdout)
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    text = str(answer.get("message") or answer.get("error") or stderr.strip() or stdout.strip()
               or f"exit status {returncode}")
    reason = " ".join(text.split())[:300]
    if answer.get("exception_name") in _UNREACHABLE or "CONNECTION FAILED" in text:
        return OperationFailed(f"conda could not reach {spec.channel_url}: locking the conda packages of profile "
                               f"{profile.name} needs {spec.channel} reachable from this machine (the hosts never "
                               f"reach it: they install from the mirror) ({reason})")
    return OperationFailed(f"conda could not resolve the conda packages of profile {profile.name} "
                           f"({' '.join(spec.specs)} from {spec.channel}): {reason}")


def miniforge(profile: Profile) -> InstallerFile:
    installer = next((i for i in profile.installers if i.name.startswith("miniforge")), None)
    if installer is None:
        raise UserError(f"profile {profile.name} has conda packages to lock but no Miniforge installer; add it "
                        "to the profile's installers")
    return installer


def installer_in_cache(profile: Profile, cache: Cache, search: list[Path]) -> Path:
    """The profile's Miniforge installer in the cache, brought in (copied from ``search`` or
    downloaded, sha256-checked) as `artifacts fetch` does when it is not there yet."""
    installer = miniforge(profile)
    if not cache.has(installer.sha256, installer.filename, installer.size):
        item = FetchItem(filename=installer.filename, urls=(installer.url,), sha256=installer.sha256,
                         size=installer.size)
        report = fetch([item], cache, search=search)
        if report.failures:
            raise OperationFailed(f"{report.failures[0]}; the conda lock runs the {installer.filename} installer: "
                                  "put it in the cache with `fm9g-deploy artifacts fetch`, or pass --from DIR with "
                                  "the directory that holds it")
    return cache.path_for(installer.sha256, installer.filename)


def lock_conda_packages(profile: Profile, cache: Cache, *, search: list[Path],
                        on_step=lambda message: None) -> list[LockedArtifact]:
    """The conda packages of ``profile``'s env, in link order (empty for a profile without a conda section)."""
    spec = profile.conda
    if spec is None:
        return []
    installer = installer_in_cache(profile, cache, search)
    with tempfile.TemporaryDirectory(prefix="fm9g-conda-lock-") as scratch:
        scratch_dir = Path(scratch)
        root, home = scratch_dir / "miniforge", scratch_dir / "home"
        home.mkdir()
        env = conda_env(home, scratch_dir / "pkgs")
        on_step(f"installing {installer.name} into a scratch directory")
        installed = subprocess.run(["bash", str(installer), "-b", "-p", str(root)], capture_output=True, text=True,
                                   env=env, stdin=subprocess.DEVNULL, check=False)
        conda = root / "bin" / "conda"
        if installed.returncode != 0 or not conda.is_file():
            last = (installed.stderr.strip() or installed.stdout.strip() or "no output").splitlines()[-1]
            raise OperationFailed(f"the Miniforge installer {installer.name} failed on this machine (exit status "
                                  f"{installed.returncode}): {last[:300]}; the conda lock runs it here, so this "
                                  "machine must be Linux of the installer's architecture")
        on_step(f"resolving the conda packages ({' '.join(spec.specs)}) from {spec.channel} for {spec.platform}")
        result = subprocess.run(dry_run_argv(conda, spec, scratch_dir / "env"), capture_output=True, text=True,
                                env=env, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            raise failure(profile, result.returncode, result.stdout, result.stderr)
        try:
            answer = json.loads(result.stdout)
        except ValueError:
            raise OperationFailed(f"conda's dry run did not answer JSON: {' '.join(result.stdout.split())[:200]}") \
                from None
    return conda_artifacts(answer)


def locked_packages(profile: Profile, lock) -> list[LockedArtifact]:
    """The conda packages a host or an image makes ``profile``'s env from, offline, in link order.

    UserError when the lock has none: the env would then need the conda channel, which hosts and
    image builds never reach.
    """
    packages = lock.conda_packages()
    if packages:
        return packages
    if profile.conda is None:
        raise UserError(f"profile {profile.name} makes a conda env but has no conda section, so hosts would need "
                        "a conda channel to create it; add `conda:` (channel, specs, platform) to the profile, "
                        f"then run `fm9g-deploy artifacts lock --profile {profile.name}`")
    raise UserError(f"the {profile.name} lock has no conda packages, so hosts would need {profile.conda.channel} "
                    f"to create the env; run `fm9g-deploy artifacts lock --profile {profile.name}` on a machine "
                    f"that reaches {profile.conda.channel}, then `fm9g-deploy artifacts fetch --profile "
                    f"{profile.name}`")


def explicit_spec(packages: list[LockedArtifact], folder: str) -> str:
    """conda's explicit spec of ``packages`` as files in ``folder``, in link order (`conda create --offline --file`)."""
    lines = ["# fm9g-deploy: the locked conda packages, in link order", "@EXPLICIT"]
    lines += [f"file://{folder.rstrip('/')}/{package.filename}" for package in packages]
    return "\n".join(lines) + "\n"
