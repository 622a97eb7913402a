"""The deployment's API key: from the config, a file, or generated once and kept root-only."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from fm9g_deploy.config import DeploymentConfig
from fm9g_deploy.errors import UserError
from fm9g_deploy.keyformat import deployment_key_problem
from fm9g_deploy.paths import state_dir


def generated_key_path(inventory: Path) -> Path:
    """One generated key per inventory (its absolute path names the deployment)."""
    deployment = hashlib.sha256(str(inventory.resolve()).encode()).hexdigest()[:16]
    return state_dir() / "keys" / f"{deployment}.key"


def resolve_api_key(config: DeploymentConfig, inventory: Path) -> tuple[str, str]:
    """Return (key, where it came from). Never prints or logs the key."""
    serving = config.serving
    if serving.api_key is not None:
        return serving.api_key.get_secret_value(), "config serving.api_key"
    if serving.api_key_file is not None:
        try:
            key = serving.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"serving.api_key_file {serving.api_key_file}: cannot read it ({exc.strerror}); "
                            "fix the path or its permissions") from None
        except UnicodeDecodeError:
            raise UserError(f"serving.api_key_file {serving.api_key_file} is not a text file; put the key "
                            "in it") from None
        if not key:
            raise UserError(f"serving.api_key_file {serving.api_key_file} is empty; put the key in it")
        problem = deployment_key_problem(key)
        if problem:  # the config check read it too; the file may have changed since
            raise UserError(f"the key in serving.api_key_file {serving.api_key_file} {problem}")
        return key, f"file {serving.api_key_file}"
    path = generated_key_path(inventory)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text(encoding="utf-8").strip(), f"generated, kept in {path}"
