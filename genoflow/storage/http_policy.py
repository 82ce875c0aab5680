"""What an HTTP(S) read may retry, which redirects it may follow, and how failures are told.

Invariant: only what :func:`is_transient` accepts is ever retried — HTTP 408, 429 and most 5xx,
dropped or refused connections, timeouts, bodies cut short — and never a TLS error; a redirect
is followed only to the same host (and port, within one scheme) over the same or a safer scheme.
Nothing here returns or formats an exception's own text, which carries the full (possibly
signed) URL: failures are described by exception type, and URLs shown are redacted.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3

from genoflow.core.errors import redact

__all__ = [
    "LIBRARY_ERRORS",
    "RETRYABLE_STATUSES",
    "HttpPolicy",
    "describe",
    "is_transient",
    "redirect_refusal",
]

RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)} - {501, 505})
"""The HTTP statuses a repeated request may get past, for every HTTP(S) and GCS read: request
timeout, too many requests, and the server errors except 501 and 505, which will not change."""

LIBRARY_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError,
                  http.client.HTTPException)  # fmt: skip
"""Everything requests, urllib3 and http.client raise for a failed request or read."""

# requests' ConnectionError covers refused and reset connections and DNS hiccups (its SSLError
# subclass is excluded by _PERMANENT_ERRORS); the builtin ConnectionError covers the same below.
_TRANSIENT_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                     requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
                     urllib3.exceptions.TimeoutError, http.client.IncompleteRead,
                     ConnectionError, TimeoutError)  # fmt: skip
_PERMANENT_ERRORS = (requests.exceptions.SSLError, urllib3.exceptions.SSLError)
# What went wrong, by the innermost exception type that names it (types carry no URL).
_CAUSES = {
    "IncompleteRead": "the server sent fewer bytes than declared (the connection closed early)",
    "SSLCertVerificationError": "TLS certificate not trusted",
    "SSLError": "TLS error",
    "ConnectionRefusedError": "connection refused",
    "ConnectionResetError": "connection reset",
    "RemoteDisconnected": "connection closed by the server",
    "gaierror": "host name not resolved",
    "ConnectTimeoutError": "connection timed out",
    "ReadTimeoutError": "read timed out",
    "NewConnectionError": "could not connect",
    "ProtocolError": "connection dropped",
    "ChunkedEncodingError": "connection dropped",
}


@dataclass(frozen=True)
class HttpPolicy:
    """How patiently to read one URL.

    Attributes:
        attempts: tries in a row without progress; delivering new bytes starts a new count.
        max_seconds: longest time without progress (retries and backoff included).
        backoff: the first retry's delay in seconds; it doubles per retry, with jitter.
        max_backoff: the longest single delay.
        connect_timeout: seconds to open a connection.
        read_timeout: seconds to wait for any byte of headers or body.
        max_redirects: same-host redirects followed per request.
    """

    attempts: int = 5
    max_seconds: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 10.0
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    max_redirects: int = 5

    def __post_init__(self) -> None:
        if self.attempts < 1 or min(self.max_seconds, self.connect_timeout, self.read_timeout) <= 0:
            raise ValueError("attempts must be at least 1; max_seconds and timeouts positive")
        if not 0 <= self.backoff <= self.max_backoff or self.max_redirects < 0:
            raise ValueError("need 0 <= backoff <= max_backoff and max_redirects >= 0")


def is_transient(exc_or_status: BaseException | int) -> bool:
    """Whether a failed request is worth repeating unchanged.

    Transient: HTTP 408, 429 and 5xx (except 501 and 505, which will not change), refused or
    reset connections, timeouts, and bodies that ended early. Everything else, TLS errors
    included, is permanent.

    Args:
        exc_or_status: an HTTP status code, or the exception a request raised.
    """
    if isinstance(exc_or_status, int):
        return exc_or_status in RETRYABLE_STATUSES
    if isinstance(exc_or_status, _PERMANENT_ERRORS):
        return False
    return isinstance(exc_or_status, _TRANSIENT_ERRORS)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (``reason``, causes, exception arguments), outer first."""
    found, queue = [exc], [exc]
    while queue and len(found) < 20:
        node = queue.pop(0)
        for inner in (getattr(node, "reason", None), node.__cause__, node.__context__, *node.args):
            if isinstance(inner, BaseException) and all(inner is not f for f in found):
                found.append(inner)
                queue.append(inner)
    return found


def describe(exc: BaseException) -> str:
    """Say what went wrong without the exception's text, which carries the full URL."""
    chain = _chain(exc)
    known = (_CAUSES.get(type(e).__name__) for e in reversed(chain))
    return next((k for k in known if k), f"request failed ({type(chain[-1]).__name__})")


def redirect_refusal(source: str, target: str) -> str | None:
    """Say why a redirect from ``source`` to ``target`` must not be followed, if it must not.

    Only the same host (and, within one scheme, the same port) is followed, so a request never
    reaches a host the manifest did not name; an upgrade from http to https is allowed, a
    downgrade or another scheme is not. The reason shows ``target`` redacted.
    """
    old, new = urlsplit(source), urlsplit(target)
    try:
        # An upgrade to https changes the default port: ports must match only within a scheme.
        ports = [p.port or {"http": 80, "https": 443}.get(p.scheme) for p in (old, new)]
        moved = old.hostname != new.hostname or (old.scheme == new.scheme and ports[0] != ports[1])
    except ValueError:  # a port out of range
        return f"redirect to a malformed URL refused ({redact(target)})"
    if moved:
        return f"redirect to another host refused ({redact(target)})"
    if new.scheme not in ("http", "https") or (old.scheme, new.scheme) == ("https", "http"):
        return f"redirect to {redact(target)} refused: not the same or a safer scheme"
    return None
