"""The ASGI layers every request passes through: access log, bounds, CORS, tokens.

Invariants:
- the access log names the method, the path (never the query string, which may carry a signed
  token), the status and the bytes sent; no header is ever logged, so neither kind of token can
  reach it (uvicorn's own access log is switched off);
- a request target longer than :data:`MAX_TARGET` answers 414, a path holding a control
  character (NUL included) 400, request headers over :data:`MAX_HEADERS` bytes 431, a body
  larger than :data:`MAX_BODY` 413 — before any route runs; a chunked body (no
  ``Content-Length``) is read up to the bound first, so it is refused the same way;
- with a tokens file, every request but a CORS preflight needs a valid bearer token (or passes
  one of ``app.state.token_checks``, e.g. a signed ticket or viewer URL); otherwise 401 with
  ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a token or a signature was
  presented and refused); an answer to a request that needed a token is never ``public`` to
  shared caches (its ``Cache-Control: public`` becomes ``private``);
- on htsget's paths (:func:`is_htsget`) every refusal is htsget's error JSON with the spec's
  status: InvalidAuthentication 401 (no bearer token, or a wrong one), PermissionDenied 403 (a
  signed URL, which opens only the file or page it was made for, offered for a ticket),
  PayloadTooLarge 413, InvalidInput 400 (an overlong target, a control character, oversized
  headers);
- on DRS's paths (:func:`is_drs`) every refusal is DRS's error JSON ``{"msg", "status_code"}``
  with the status above (a signed URL offered for a DRS object: 403, as for an htsget ticket);
- no answer ever echoes a token, a signature or a query string.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genoflow.serve.auth import Tokens, bearer
from genoflow.serve.htsget import ENDPOINTS
from genoflow.serve.htsget import MEDIA_TYPE as HTSGET_MEDIA_TYPE
from genoflow.serve.signing import Signature, signed_query, verify

ACCESS = logging.getLogger("genoflow.serve.access")
LINE = '%s - "%s %s HTTP/%s" %d %d %.1fms'  # an access-log line: see log_access
MAX_TARGET = 8192
MAX_HEADERS = 32768  # bytes of request header names and values together
MAX_BODY = 1 << 20
TokenCheck = Callable[[Scope], bool]
HTSGET_ROOTS = (*(f"/{endpoint.datatype}" for endpoint in ENDPOINTS), "/service-info")
# The htsget error type of each status a layer here refuses with (the spec's table).
HTSGET_KIND = {
    400: "InvalidInput",
    401: "InvalidAuthentication",
    403: "PermissionDenied",
    413: "PayloadTooLarge",
    414: "InvalidInput",
    431: "InvalidInput",
}
CHALLENGE = b'Bearer realm="genoflow"'
REFUSED = b'Bearer realm="genoflow", error="invalid_token"'


DRS_ROOT = "/ga4gh/drs/v1"  # GA4GH DRS (genoflow.serve.drs): its refusals are DRS's error JSON


def is_drs(path: str) -> bool:
    """Whether ``path`` is one of DRS's (:mod:`genoflow.serve.drs`), whose errors are DRS's
    ``{"msg": …, "status_code": …}``."""
    return path == DRS_ROOT or path.startswith(DRS_ROOT + "/")


def is_htsget(path: str) -> bool:
    """Whether ``path`` is one of htsget's (tickets and service-info), whose errors are
    htsget's JSON."""
    return any(path == root or path.startswith(root + "/") for root in HTSGET_ROOTS)


async def refuse(
    scope: Scope, send: Send, status: int, message: str, headers: list | None = None
) -> None:
    """Answer ``status`` with ``message``: htsget's error JSON on htsget's paths (and the
    spec's status for its error type), ``{"error": message}`` elsewhere."""
    media_type = b"application/json"
    body: dict = {"error": message}
    if is_htsget(scope.get("path", "")):
        kind = HTSGET_KIND[status]
        status = 400 if kind == "InvalidInput" else status
        media_type = HTSGET_MEDIA_TYPE.encode()
        body = {"htsget": {"error": kind, "message": message}}
    elif is_drs(scope.get("path", "")):
        body = {"msg": message, "status_code": status}
    payload = json.dumps(body).encode()
    raw = [(b"content-type", media_type), (b"content-length", str(len(payload)).encode())]
    raw.append((b"cache-control", b"no-store"))
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
            log_access(scope, status, sent, started)


def log_access(scope: Scope, status: int, sent: int, started: float) -> None:
    """The access-log line of one request: client, method, path (never the query), HTTP
    version, status, bytes sent and milliseconds since ``started`` (``time.perf_counter()``)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    client = (scope.get("client") or ("-", 0))[0]
    path = scope["path"]
    if not (path.isascii() and path.isprintable()) or "\\" in path:
        path = path.encode("unicode_escape").decode("ascii")
    args = (
        client,
        scope["method"],
        path,
        scope.get("http_version", "1.1"),
        status,
        sent,
        (time.perf_counter() - started) * 1000,
    )
    # What ACCESS.info does, less its walk up the stack for a caller no format shows.
    ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, __file__, 0, LINE, args, None))


# A refused request's body is left unread: the connection closes after the answer, so the client
# sees its end at once instead of when keep-alive times out.
CLOSE = [(b"connection", b"close")]


class Bounds:
    """Refuse oversized targets, headers and bodies, and control characters in paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is not None:
            await refuse(scope, send, *problem, CLOSE)
            return
        headers = Headers(scope=scope)
        if "content-length" not in headers and "transfer-encoding" in headers:
            body = await self._read(receive)
            if body is None:
                await refuse(
                    scope, send, 413, f"a request body may hold at most {MAX_BODY} bytes", CLOSE
                )
                return
            receive = _replay(body)
        await self.app(scope, self._bounded(receive), send)

    @staticmethod
    def _problem(scope: Scope) -> tuple[int, str] | None:
        """The status and reason that refuse the request's head, or None."""
        target = len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
        if target > MAX_TARGET:
            return 414, f"the request target is over {MAX_TARGET} bytes"
        if any(ord(char) < 32 or ord(char) == 127 for char in scope["path"]):
            return 400, "the path holds a control character"
        if sum(len(name) + len(value) for name, value in scope.get("headers", [])) > MAX_HEADERS:
            return 431, f"the request headers are over {MAX_HEADERS} bytes"
        length = Headers(scope=scope).get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return 413, f"a request body may hold at most {MAX_BODY} bytes"
        return None

    @staticmethod
    async def _read(receive: Receive) -> bytes | None:
        """A chunked body, read whole while it stays within :data:`MAX_BODY`; None beyond."""
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts)
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                return None
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _bounded(receive: Receive) -> Receive:
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:  # more than its Content-Length said
                return {"type": "http.disconnect"}
            return message

        return bounded


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands the app ``body`` once, then waits for the disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


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
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if self._allowed(scope):
            await self.app(scope, receive, _private(send))
            return
        await refuse(scope, send, *self._refusal(scope))

    def _allowed(self, scope: Scope) -> bool:
        token = bearer(Headers(scope=scope))
        if token is not None and self.tokens.allows(token):
            return True
        return any(check(scope) for check in self.checks)

    def _refusal(self, scope: Scope) -> tuple[int, str, list]:
        """Why the request is refused: status, message and challenge; never echoes what it
        presented."""
        presented = Headers(scope=scope).get("authorization")
        if presented is not None:
            return 401, "the bearer token is not valid", [(b"www-authenticate", REFUSED)]
        if signed_query(scope) is not None:
            if is_htsget(scope["path"]) or is_drs(scope["path"]):
                message = (
                    "a signed URL opens only the file or page it was made for; "
                    "an htsget ticket or a DRS object needs a bearer token"
                )
                return 403, message, []
            state = verify(self.tokens.path, scope)
            if state is Signature.EXPIRED:
                message = "this signed URL has expired: ask for a new ticket or link"
            else:
                message = "this signed URL is not valid for this path"
            return 401, message, [(b"www-authenticate", REFUSED)]
        return 401, "a valid bearer token is required", [(b"www-authenticate", CHALLENGE)]


def _private(send: Send) -> Send:
    """``send`` with any ``Cache-Control: public`` made ``private``: a shared cache must not
    hand an answer that needed a token to a request that has none."""

    async def private(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value.replace(b"public", b"private"))
                if name.lower() == b"cache-control"
                else (name, value)
                for name, value in message.get("headers", [])
            ]
            message = {**message, "headers": headers}
        await send(message)

    return private
