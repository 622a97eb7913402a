"""Read a wheel's own metadata (name, version) without installing it."""

from __future__ import annotations

import zipfile
from email.parser import Parser
from pathlib import Path

from fm9g_deploy.errors import UserError


def wheel_metadata(path: Path) -> tuple[str, str]:
    """(Name, Version) from the wheel's .dist-info/METADATA; UserError if it is not a wheel."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist()
                     if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise UserError(f"{path} is not a wheel (no single .dist-info/METADATA inside); "
                                "pass the .whl file itself")
            headers = Parser().parsestr(archive.read(names[0]).decode("utf-8", "replace"), headersonly=True)
    except (zipfile.BadZipFile, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable wheel ({reason}); pass the .whl file itself") from None
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        raise UserError(f"{path}: its METADATA has no Name or Version; the wheel is damaged")
    return name, version
