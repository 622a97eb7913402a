"""Scripts that run on a host, inside its env, for `fm9g-deploy infer`.

Each is self-contained (the standard library plus torch / transformers / vllm, which the host's
env has): it reads one JSON request on standard input and writes one JSON result to standard
output; everything the libraries print goes to standard error. They must run on the oldest
Python a profile installs (3.10), so no newer syntax.
"""

from pathlib import Path

RUNNERS_DIR = Path(__file__).resolve().parent


def runner_script(engine: str) -> Path:
    """The runner for an engine: transformers_runner.py or vllm_runner.py."""
    return RUNNERS_DIR / f"{engine}_runner.py"
