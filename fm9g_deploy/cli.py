"""The fm9g-deploy command line.

Each subcommand lives in fm9g_deploy/commands/<name>.py and exposes ``register(subparsers)``.
Those modules import only argparse at load time, so ``--help`` stays fast; the work (and the
heavy imports: ansible, docker, httpx) happens inside the handler they set with ``set_defaults``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fm9g_deploy import __version__
from fm9g_deploy.errors import OperationFailed, UserError

#: Subcommand modules, in the order --help lists them (roughly the order of a rollout).
COMMAND_MODULES = [
    "config",
    "sandbox",
    "artifacts",
    "model",
    "ping",
    "plan",
    "provision",
    "deploy",
    "status",
    "infer",
    "chat",
    "bench",
    "image",
    "verify",
]

DESCRIPTION = """\
Provision, deploy and verify FM9G (九格) models behind an OpenAI-compatible vLLM service.

A typical rollout: `sandbox up` (to rehearse locally) or your own inventory, then
`provision`, `deploy`, `verify`. Every command that changes hosts takes --check.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm9g-deploy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"fm9g_deploy.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except UserError as exc:
        print(f"fm9g-deploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OperationFailed as exc:
        print(f"fm9g-deploy: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fm9g-deploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fm9g-deploy plan ... | head`): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
