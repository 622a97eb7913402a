"""Where the project's Ansible content and the operator's state live."""

import os
from pathlib import Path

#: Root of the project tree: playbooks/, roles/, images/ sit beside the package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS_DIR = PROJECT_ROOT / "playbooks"
ROLES_DIR = PROJECT_ROOT / "roles"
IMAGES_DIR = PROJECT_ROOT / "images"

#: The config file looked for beside an inventory when --config is not given.
CONFIG_FILENAME = "fm9g.yml"


def state_dir() -> Path:
    """Per-user state (sandbox keys and inventory, ansible-runner artifacts)."""
    base = os.environ.get("FM9G_DEPLOY_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "fm9g-deploy"


def cache_dir() -> Path:
    """Per-user cache (the artifact cache the mirror serves)."""
    base = os.environ.get("FM9G_DEPLOY_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fm9g-deploy"
