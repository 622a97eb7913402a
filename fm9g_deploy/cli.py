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
from fm9g_deploy.errors import MAX_ERROR_LINE, OperationFailed, UserError, one_line

#: Subcommand modules, in the order --help lists them (roughly the order of a rollout).
COMMAND_MODULES = [
    "init",
    "config",
    "doctor",
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


#: A failed operation's line may carry a few hosts' problems; still one bounded line.
MAX_FAILURE_LINE = 2000
#: Set to show the traceback of an unexpected error (a bug) instead of its one-line summary.
DEBUG_ENV = "FM9G_DEBUG"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a wrong option is the CLI's one-line UserError (exit 2), not usage + error.

    Subparsers are made of the parent's class, so every subcommand gets this too.
    """

    def error(self, message: str):
        raise UserError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        result = args.handler(args)
    except UserError as exc:
        _say("error", str(exc), MAX_ERROR_LINE)
        return exc.exit_code
    except OperationFailed as exc:
        _say("failed", str(exc), MAX_FAILURE_LINE)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fm9g-deploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fm9g-deploy plan ... | head`): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # The machine said no (a full disk, a permission) where no check of ours expected it.
        _say("failed", f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", MAX_ERROR_LINE)
        return 1
    except Exception as exc:
        # A bug of ours, not the operator's: still one line, with how to see the rest.
        if os.environ.get(DEBUG_ENV):
            raise
        _say("internal error", f"{type(exc).__name__}: {exc} (a bug in fm9g-deploy; run again with "
                               f"{DEBUG_ENV}=1 for the traceback and report it)", MAX_ERROR_LINE)
        return 1
    return int(result or 0)


def _say(kind: str, message: str, limit: int) -> None:
    """One line on stderr, whatever ``message`` holds (newlines, escapes, undecodable bytes)."""
    line = one_line(f"fm9g-deploy: {kind}: {message}", limit)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
