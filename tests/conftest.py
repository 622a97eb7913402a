import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# testinfra's ansible backend runs ansible-inventory from PATH: use this Python's (a venv's) tools.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def load_file_module(path: Path):
    """The module in ``path`` (a role's host-side program, a script), loaded as its file's name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `fm9g-deploy` entry point in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "fm9g_deploy", *args],
        capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cli():
    return run_cli
