"""The ASGI layers every request passes through: access log, bounds, CORS, tokens.

Invariants:
- the access log names the method, the path (never the query string, which may carry a signed
  token), the status and the bytes sent; no header is ever logged, so neither kind of token can
  reach it (uvicorn's own access log is switched off);
- a request target longer than :data:`MAX_TARGET` answers 414, a path holding a control
  character (NUL included) 400, a body larger than :data:`MAX_BODY` 413 — before any route runs;
- with a tokens file, every request but a CORS preflight needs a valid bearer token (or passes
  one of ``app.state.token_checks``, e.g. a signed htsget ticket URL); otherwise 401 with
  ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genoflow.serve.auth import Tokens, bearer

ACCESS = logging.getLogger("genoflow.serve.access")
MAX_TARGET = 8192
MAX_BODY = 1 << 20
TokenCheck = Callable[[Scope], bool]


async def _json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class AccessLog:
    """One line per request on the ``genoflow.serve.access`` logger, without query or headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, sent, status = time.perf_counter(), 0, 500

        async def counting(message: Message) -> None:
            nonlocal sent, status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            client = (scope.get("client") or ("-", 0))[0]
            path = scope["path"].encode("unicode_escape").decode("ascii")
            ACCESS.info(
                '%s - "%s %s HTTP/%s" %d %d %.1fms',
                client,
                scope["method"],
                path,
                scope.get("http_version", "1.1"),
                status,
                sent,
                (time.perf_counter() - started) * 1000,
            )


class Bounds:
    """Refuse oversized targets and bodies and control characters in paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
        if target > MAX_TARGET:
            await _json(send, 414, {"error": f"the request target is over {MAX_TARGET} bytes"})
            return
        if any(ord(char) < 32 or ord(char) == 127 for char in scope["path"]):
            await _json(send, 400, {"error": "the path holds a control character"})
            return
        length = Headers(scope=scope).get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await _json(send, 413, {"error": f"a request body may hold at most {MAX_BODY} bytes"})
            return
        await self.app(scope, self._bounded(receive), send)

    @staticmethod
    def _bounded(receive: Receive) -> Receive:
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:  # a chunked body with no Content-Length
                return {"type": "http.disconnect"}
            return message

        return bounded


class RequireToken:
    """401 unless the request carries a token of the tokens file (or passes a token check).

    Args:
        app: the application inside.
        tokens: the allowed tokens.
        checks: more ways a request may prove itself (``app.state.token_checks``), consulted
            when the bearer header does not match.
    """

    def __init__(self, app: ASGIApp, tokens: Tokens, checks: list[TokenCheck]) -> None:
        self.app, self.tokens, self.checks = app, tokens, checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Bearer realm="genoflow"')]
        await _json(send, 401, {"error": "a valid bearer token is required"}, challenge)

    def _allowed(self, scope: Scope) -> bool:
        token = bearer(Headers(scope=scope))
        if token is not None and self.tokens.allows(token):
            return True
        return any(check(scope) for check in self.checks)
