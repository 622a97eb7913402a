"""Re-hash the cache: every stored file against the hash it is stored under, and what the lock
and the model pins expect against what is there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fm9g_deploy.artifacts.cache import Cache, sha256_file
from fm9g_deploy.artifacts.lock import Lock
from fm9g_deploy.errors import UserError


@dataclass
class Corrupt:
    path: Path
    expected: str
    actual: str


@dataclass
class VerifyReport:
    checked: int = 0
    checked_bytes: int = 0
    corrupt: list[Corrupt] = field(default_factory=list)
    #: One line per expected file that is not in the cache.
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def verify(cache: Cache, locks: list[Lock], *, on_bytes=lambda n: None, on_file=lambda path: None) -> VerifyReport:
    """Re-hash ``cache``; UserError when it is missing or empty (nothing checked is not 'verified')."""
    cache.require_existing()
    report = VerifyReport()
    for expected, path in cache.stored_files():
        on_file(path)
        actual = sha256_file(path, on_bytes)
        report.checked += 1
        report.checked_bytes += path.stat().st_size
        if actual != expected:
            report.corrupt.append(Corrupt(path, expected, actual))
    for lock in locks:
        for artifact in lock.artifacts:
            if not cache.has(artifact.sha256, artifact.filename):
                how = (f"`fm9g-deploy artifacts add FILE --family {artifact.family}`"
                       if artifact.kind == "operator-wheel"
                       else f"`fm9g-deploy artifacts fetch --profile {lock.profile}`")
                report.missing.append(f"{artifact.filename} (profile {lock.profile}, sha256 {artifact.sha256[:12]}…): "
                                      f"missing; {how}")
    for model, pin in sorted(cache.pins().items()):
        if not cache.has(pin["sha256"], pin["filename"]):
            report.missing.append(f"{pin['filename']} (model {model}, pinned sha256 {pin['sha256'][:12]}…): missing; "
                                  f"`fm9g-deploy artifacts fetch --profile PROFILE --model {model}`")
    for family, record in sorted(cache.operator_wheels().items()):
        if not cache.has(record["sha256"], record["filename"]):
            report.missing.append(f"{record['filename']} (vLLM wheel {family}, sha256 {record['sha256'][:12]}…): "
                                  f"missing; `fm9g-deploy artifacts add FILE --family {family}`")
    if not report.checked and not report.missing:
        raise UserError(f"the cache dir {cache.root} holds no files, so there is nothing to verify; pass the "
                        "cache with --cache-dir, or fill it with `fm9g-deploy artifacts fetch --profile PROFILE`")
    return report
