"""The wheel carries the Ansible content the CLI drives (see fm9g_deploy/paths.py).

playbooks/, roles/, library/, module_utils/, locks/, images/, inventory/ and ansible.cfg live at the
top of the checkout, where operators and Ansible expect them; the build copies them into the
package as fm9g_deploy/_content so an installed wheel finds them without a checkout. Symbolic links
(module_utils shares modules with the package) are copied as the files they point to.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Kept in step with fm9g_deploy.paths.CONTENT_ENTRIES (tests/unit/test_packaging.py checks it).
CONTENT_ENTRIES = ("ansible.cfg", "playbooks", "roles", "library", "module_utils", "locks", "images",
                   "inventory")


class BuildWithContent(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # an editable install reads the checkout itself
        target = Path(self.build_lib) / "fm9g_deploy" / "_content"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for entry in CONTENT_ENTRIES:
            source = ROOT / entry
            if source.is_dir():
                shutil.copytree(source, target / entry, symlinks=False,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target / entry)


setup(cmdclass={"build_py": BuildWithContent})
