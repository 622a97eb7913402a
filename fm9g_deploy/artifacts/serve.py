"""Serve the artifact cache over HTTP, with Range support, so hosts never need the internet.

GET and HEAD only; a directory answers with its index.html (the published pip views), or a
redirect to the same path with a slash so relative links resolve. Nothing outside the cache root
is reachable, and partial downloads are not served.
"""

from __future__ import annotations

import mimetypes
import re
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fm9g_deploy import __version__

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_HIDDEN_TOP = {"partial"}


class CacheRequestHandler(BaseHTTPRequestHandler):
    server_version = f"fm9g-deploy-mirror/{__version__}"
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, root: Path, quiet: bool = False, **kwargs):
        self.root = root
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def do_HEAD(self) -> None:  # noqa: N802 - the http.server naming
        self._serve(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(send_body=True)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if not self.quiet:
            super().log_message(format, *args)

    def _serve(self, send_body: bool) -> None:
        raw_path = urlsplit(self.path).path
        path = self._local_path(raw_path)
        if path is None:
            return self._error(HTTPStatus.NOT_FOUND)
        if path.is_dir():
            if not raw_path.endswith("/"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", raw_path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = path / "index.html"
            if not path.is_file():
                return self._error(HTTPStatus.NOT_FOUND)
        if not path.is_file():
            return self._error(HTTPStatus.NOT_FOUND)
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        requested = self.headers.get("Range")
        if requested and not self._if_range_changed(path):
            parsed = _parse_range(requested, size)
            if parsed is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = HTTPStatus.PARTIAL_CONTENT
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", _content_type(path))
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", _etag(path))
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if send_body and length:
            with path.open("rb") as handle:
                handle.seek(start)
                _copy(handle, self.wfile, length)

    def _local_path(self, raw_path: str) -> Path | None:
        parts = [p for p in unquote(raw_path).split("/") if p]
        if any(p in (".", "..") or p.startswith(".") or "\\" in p for p in parts):
            return None
        if parts and parts[0] in _HIDDEN_TOP:
            return None
        path = self.root.joinpath(*parts)
        try:
            path.resolve().relative_to(self.root.resolve())
        except (ValueError, OSError):
            return None
        return path if path.exists() else None

    def _if_range_changed(self, path: Path) -> bool:
        """An If-Range that does not name this file's current version means 'send it all'."""
        validator = self.headers.get("If-Range")
        return bool(validator) and validator != _etag(path) and \
            validator != self.date_time_string(int(path.stat().st_mtime))

    def _error(self, status: HTTPStatus) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single 'bytes=' range, or None if it cannot be satisfied."""
    match = _RANGE.match(header.strip())
    if not match or size == 0:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        count = int(last)
        return (max(0, size - count), size - 1) if count else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start < size and start <= end else None


def _etag(path: Path) -> str:
    stat = path.stat()
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'


def _content_type(path: Path) -> str:
    if path.suffix == ".html":
        return "text/html; charset=utf-8"
    if path.suffix in (".txt", ".json"):
        return ("application/json" if path.suffix == ".json" else "text/plain") + "; charset=utf-8"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _copy(source, sink, length: int) -> None:
    remaining = length
    while remaining:
        chunk = source.read(min(1024 * 1024, remaining))
        if not chunk:
            break
        sink.write(chunk)
        remaining -= len(chunk)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8080, *, quiet: bool = False) -> ThreadingHTTPServer:
    """A threaded server for ``root`` (not started; call serve_forever). Port 0 picks a free one."""
    handler = partial(CacheRequestHandler, root=Path(root), quiet=quiet)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def parse_bind(value: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); ValueError when it is neither."""
    host, _, port = value.rpartition(":") if ":" in value else ("", "", value)
    host = host.strip("[]") or "127.0.0.1"
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range")
    return host, number

