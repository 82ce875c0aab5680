"""A local HTTP server that serves files only to signed URLs, and misbehaves on request.

Files in a folder are served at ``http://127.0.0.1:<port>/<name>?token=<secret>``. An expired
or wrong token gets 403, an unknown name 404. Per-name faults (:class:`Fault`) make it answer
errors, drop the connection halfway through a body, always send fewer bytes than declared,
stall before the body, or redirect. Every request is recorded so tests can count retries.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

SHORT_BY = 100  # bytes a "short" body leaves out of the end of the file


@dataclass
class Fault:
    """How the server misbehaves for one name.

    Attributes:
        status: the error status answered the first ``errors`` times.
        errors: how many requests get ``status`` before the file is served.
        drops: how many requests get half their body and then a closed connection.
        short: every response leaves out the file's last ``SHORT_BY`` bytes.
        stalls: how many requests wait ``stall_seconds`` after the headers.
        stall_seconds: the length of a stall.
        redirect: a Location to answer every request with (302).
        replace_after_drop: new content the file takes just after the first dropped body.
    """

    status: int = 500
    errors: int = 0
    drops: int = 0
    short: bool = False
    stalls: int = 0
    stall_seconds: float = 1.0
    redirect: str | None = None
    replace_after_drop: bytes | None = None


@dataclass(frozen=True)
class Request:
    """One request as received: the file name, the Host header and every header."""

    name: str
    host: str
    headers: dict[str, str] = field(default_factory=dict)


class SignedUrlServer:
    """Serve ``root``'s files to requests carrying ``?token=<secret>``.

    Args:
        root: the folder whose files are served (created if missing).
        ranges: honour ``Range`` requests (guarded by a matching ``If-Range``) with 206.
    """

    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.ranges = ranges
        self.secret = secrets.token_hex(16)
        self.expired_secret = secrets.token_hex(16)
        self.faults: dict[str, Fault] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def put(self, name: str, data: bytes) -> None:
        """Write a file to be served as ``name``."""
        (self.root / name).write_bytes(data)

    def url(self, name: str, *, expired: bool = False, host: str = "127.0.0.1") -> str:
        """A signed URL for ``name``; ``expired`` signs it with the expired token."""
        token = self.expired_secret if expired else self.secret
        return f"http://{host}:{self.port}/{name}?token={token}"

    def fault(self, name: str, **settings: Any) -> None:
        """Make requests for ``name`` misbehave (see :class:`Fault` for the settings)."""
        self.faults[name] = Fault(**settings)

    def requests_for(self, name: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.name == name]

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        name = unquote(parts.path.lstrip("/"))
        token = parse_qs(parts.query).get("token", [""])[0]
        with self._lock:
            seen = sum(1 for r in self.requests if r.name == name)
            self.requests.append(
                Request(name, handler.headers.get("Host", ""), dict(handler.headers))
            )
        fault = self.faults.get(name, Fault())
        path = self.root / name
        if token != self.secret:
            _answer(handler, 403)
        elif fault.redirect:
            _answer(handler, 302, location=fault.redirect)
        elif seen < fault.errors:
            _answer(handler, fault.status)
        elif "/" in name or name.startswith(".") or not path.is_file():
            _answer(handler, 404)
        else:
            self._serve(handler, path, fault, seen)

    def _serve(self, handler: BaseHTTPRequestHandler, path: Path, fault: Fault, seen: int) -> None:
        body = path.read_bytes()
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        start = self._range_start(handler, etag)
        payload = body[start:]
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("ETag", etag)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        handler.end_headers()
        try:
            self._send_body(handler, path, fault, seen, start, body)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up first (a read timeout): nothing to serve any more

    def _send_body(
        self, handler: BaseHTTPRequestHandler, path: Path, fault: Fault, seen: int, start: int,
        body: bytes,
    ) -> None:  # fmt: skip
        payload = body[start:]
        if seen < fault.stalls:
            time.sleep(fault.stall_seconds)
        if seen < fault.drops:
            handler.wfile.write(payload[: len(payload) // 2])
            if fault.replace_after_drop is not None and seen == 0:
                path.write_bytes(fault.replace_after_drop)
            _hang_up(handler)
        elif fault.short:
            handler.wfile.write(body[start : max(start, len(body) - SHORT_BY)])
            _hang_up(handler)
        else:
            handler.wfile.write(payload)

    def _range_start(self, handler: BaseHTTPRequestHandler, etag: str) -> int:
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if not (self.ranges and match and handler.headers.get("If-Range") == etag):
            return 0
        return int(match.group(1))


def _answer(handler: BaseHTTPRequestHandler, status: int, *, location: str | None = None) -> None:
    handler.send_response(status)
    if location:
        handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _hang_up(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


def _handler_for(server: SignedUrlServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.handle(self)

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet: the default prints every request line, token included, on stderr."""

    return Handler


@pytest.fixture
def signed_url_server(tmp_path: Path) -> Iterator[SignedUrlServer]:
    """A running :class:`SignedUrlServer` serving ``tmp_path / "served"``; stopped afterwards."""
    server = SignedUrlServer(tmp_path / "served")
    server.start()
    try:
        yield server
    finally:
        server.stop()
