"""Options and checks shared by the commands that talk to a served endpoint (chat, bench).

Imports only argparse, os and pathlib, so subcommands may use it while building the parser.
The API key is read from a flag, a file or the environment and is never printed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

API_KEY_ENV = "FM9G_API_KEY"
DEFAULT_MODEL = "9g"


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", required=True, metavar="URL",
        help="the service's base URL, e.g. http://127.0.0.1:8020 (a trailing /v1 is fine)",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key", metavar="KEY",
        help=f"the API key (shows in `ps`; prefer --api-key-file or the {API_KEY_ENV} variable)",
    )
    keys.add_argument("--api-key-file", type=Path, metavar="FILE", help="read the API key from FILE")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="NAME",
        help=f"the served model name (default: {DEFAULT_MODEL}, the guide's --served-model-name)",
    )


def base_url(url: str) -> str:
    """``http://host:port`` from what the operator typed (with or without /v1, trailing slash)."""
    from fm9g_deploy.errors import UserError

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--url {url!r} is not an http(s) URL; write e.g. http://127.0.0.1:8020")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def api_key_from(args: argparse.Namespace) -> str | None:
    """--api-key, else --api-key-file, else $FM9G_API_KEY, else None (a server without a key)."""
    from fm9g_deploy.errors import UserError

    if args.api_key is not None:
        if not args.api_key.strip():
            raise UserError("--api-key is empty; pass the service's key")
        return args.api_key.strip()
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--api-key-file {args.api_key_file}: cannot read it ({exc.strerror}); "
                            "fix the path or its permissions") from None
        if not key:
            raise UserError(f"--api-key-file {args.api_key_file} is empty; put the key in it")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def key_rejected_message(url: str, key: str | None) -> str:
    if key is None:
        return (f"{url} wants an API key (401); pass --api-key-file FILE or set {API_KEY_ENV} "
                "(the deployment's serving.api_key)")
    return (f"{url} rejected the API key (401); pass the deployment's key with --api-key-file FILE "
            f"or {API_KEY_ENV}")


def model_missing_message(url: str, model: str, served: list[str] | None = None, detail: str = "") -> str:
    listed = f"; it serves {', '.join(served)}" if served else ""
    why = f" ({detail})" if detail else ""
    return f"{url} does not serve a model named {model!r}{why}{listed}; pass --model with the served name"
