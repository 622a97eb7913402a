"""Options and checks shared by the commands that talk to a served endpoint (chat, bench).

Imports only argparse, os and pathlib, so subcommands may use it while building the parser.
The API key is read from a file or the environment (never the command line) and is never printed.
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
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help=f"read the API key from FILE (default: the {API_KEY_ENV} variable)")
    # Still parsed, only to refuse it with the fix: a key on the command line is in `ps` for every user.
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="NAME",
        help=f"the served model name (default: {DEFAULT_MODEL}, the guide's --served-model-name)",
    )


def base_url(url: str) -> str:
    """``http://host:port`` from what the operator typed (with or without /v1, trailing slash)."""
    from fm9g_deploy.errors import UserError

    refused = UserError(f"--url {url[:80]!r} is not an http(s) URL; write e.g. http://127.0.0.1:8020")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:  # an unclosed [IPv6, a port out of range, characters NFKC changes
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused
    if (any(not char.isprintable() for char in url.strip()) or any(char.isspace() for char in parts.netloc)
            or not _idna_ok(parts.hostname)):
        raise refused
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _idna_ok(host: str) -> bool:
    """Whether the HTTP clients can encode ``host`` (httpx raised InvalidURL deep in a request)."""
    if host.isascii():
        return True
    try:
        import idna  # what httpx encodes hosts with
    except ImportError:
        try:
            host.encode("idna")
        except UnicodeError:
            return False
        return True
    try:
        idna.encode(host.lower())
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return True


def api_key_from(args: argparse.Namespace) -> str | None:
    """--api-key-file, else $FM9G_API_KEY, else None (a server without a key); never --api-key."""
    from fm9g_deploy.errors import UserError
    from fm9g_deploy.keyformat import client_key_problem

    if getattr(args, "api_key", None) is not None:
        raise UserError(f"--api-key puts the key on the command line, where `ps` shows it to every user; "
                        f"pass --api-key-file FILE or set {API_KEY_ENV} instead")
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--api-key-file {args.api_key_file}: cannot read it ({exc.strerror}); "
                            "fix the path or its permissions") from None
        except UnicodeDecodeError:
            raise UserError(f"--api-key-file {args.api_key_file} is not a text file; put the key in it") from None
        if not key:
            raise UserError(f"--api-key-file {args.api_key_file} is empty; put the key in it")
        source = f"the key in --api-key-file {args.api_key_file}"
    else:
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            return None
        source = f"the key in {API_KEY_ENV}"
    problem = client_key_problem(key)
    if problem:  # httpx would fail on it with a UnicodeEncodeError deep in the request
        raise UserError(f"{source} {problem}")
    return key


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
