#!/usr/bin/env python3
"""Merge what came back from the GPU host (run.py's `serve` and `warm` folders) into one results
file, with the numerical proof's verdicts computed here from the vLLM runs and the reference.

    .venv/bin/python benchmarks/gpu_proof/collect.py SERVE_DIR WARM_DIR [NUMERICS_DIR] > benchmarks/gpu_proof/results-h200.json

NUMERICS_DIR: where a later `run.py numerics` left its runs (default: WARM_DIR).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fm9g_deploy.numerics import compare  # noqa: E402
from fm9g_deploy.reference_model import ReferenceModel  # noqa: E402
from fm9g_deploy.tinymodel import write_tiny_tarball  # noqa: E402

#: The runs of run.py's numerics step: label -> (catalog model the reference loads, expected verdict).
CASES = {"tiny-random": ("tiny-random", True), "tiny-random-mha": ("tiny-random-mha", True),
         "tiny-random-wrong": ("tiny-random", False)}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    serve_dir, warm_dir, numerics_dir = map(Path, argv + argv[1:] if len(argv) == 2 else argv)
    results = {**json.loads((serve_dir / "gpu_proof.json").read_text()),
               **json.loads((warm_dir / "gpu_proof.json").read_text()),
               **json.loads((numerics_dir / "gpu_proof.json").read_text())}
    verdicts = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, (model, expected) in CASES.items():
            run = json.loads((numerics_dir / f"numerics-{label}.json").read_text())
            write_tiny_tarball(Path(folder), extract=True, name=model)
            verdict = compare(ReferenceModel.load(Path(folder) / model), run["results"], run["dtype"])
            verdicts[label] = {**verdict.to_dict(), "expected_to_pass": expected, "summary": verdict.summary(),
                               "device": run["device"], "versions": run["versions"]}
    results["numerics"] = verdicts
    print(json.dumps(results, indent=1))
    return 0 if all(v["passed"] == v["expected_to_pass"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
