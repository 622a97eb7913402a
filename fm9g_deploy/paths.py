"""Where the project's Ansible content and the operator's state live."""

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
#: An installed wheel carries the content inside the package (setup.py's build step puts it here);
#: a git checkout keeps it beside the package. Nothing is looked up in the working directory.
_BUNDLED_CONTENT = _PACKAGE_DIR / "_content"


def _content_root() -> Path:
    if (_BUNDLED_CONTENT / "playbooks").is_dir():
        return _BUNDLED_CONTENT
    return _PACKAGE_DIR.parent


#: Root of the Ansible content: ansible.cfg, playbooks/, roles/, library/, module_utils/, locks/,
#: images/ and the example inventory/.
CONTENT_ROOT = _content_root()
ANSIBLE_CFG = CONTENT_ROOT / "ansible.cfg"
PLAYBOOKS_DIR = CONTENT_ROOT / "playbooks"
ROLES_DIR = CONTENT_ROOT / "roles"
LIBRARY_DIR = CONTENT_ROOT / "library"
MODULE_UTILS_DIR = CONTENT_ROOT / "module_utils"
LOCKS_DIR = CONTENT_ROOT / "locks"
IMAGES_DIR = CONTENT_ROOT / "images"
#: The commented example config and inventory `fm9g-deploy init` copies.
EXAMPLE_INVENTORY_DIR = CONTENT_ROOT / "inventory"

#: The directory trees (and single files) the wheel and the sdist must carry, relative to CONTENT_ROOT.
CONTENT_ENTRIES = ("ansible.cfg", "playbooks", "roles", "library", "module_utils", "locks", "images",
                   "inventory")

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
