"""Reading sources over HTTP(S), signed URLs included, without ever revealing their token.

Invariants:

- A signed URL's query string is a credential. It never reaches a log record, an exception
  message or an exception chain: every library error becomes a :class:`SourceError` built from
  :func:`~genoflow.errors.redact`, raised outside the ``except`` block so no URL-carrying
  exception is chained, and urllib3's loggers get a filter that strips query strings.
- The bytes handed to the caller are exactly the server's body, in order, each once. After a
  transient failure mid-body the download *resumes* at the first byte not yet delivered: a
  ``Range`` request guarded by ``If-Range`` when the server gave an ETag or Last-Modified, or else
  a fresh request whose already-delivered bytes are read and discarded. A body that changed on
  the server meanwhile, or that ends before its ``Content-Length``, is an error, never a file.
- Only what :func:`is_transient` accepts is retried, with exponential backoff bounded by
  :attr:`HttpPolicy.attempts` and :attr:`HttpPolicy.max_seconds`; urllib3's own retries are off.
"""

from __future__ import annotations

import functools
import http.client
import io
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from genoflow.errors import SourceError, redact
from genoflow.storage import staging

log = logging.getLogger(__name__)

# Small reads keep progress fine-grained: a dropped connection loses at most one piece.
_PIECE = 1 << 16
_LIBRARY_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError,
                   http.client.HTTPException)  # fmt: skip
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
_LIBRARY_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager",
                    "urllib3.response", "urllib3.util.retry", "requests")  # fmt: skip
_QUERY = re.compile(r"\?[^\s\"'<>]+")


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
        status = exc_or_status
        return status in (408, 429) or (500 <= status <= 599 and status not in (501, 505))
    if isinstance(exc_or_status, _PERMANENT_ERRORS):
        return False
    return isinstance(exc_or_status, _TRANSIENT_ERRORS)


@dataclass(frozen=True)
class _Failure:
    reason: str
    transient: bool
    hint: str | None = None


class _RedactQueries(logging.Filter):
    """Strip query strings from a library's log records: urllib3 logs request URLs in full."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "?" in text:
            record.msg, record.args = _QUERY.sub("?…", text), ()
        if record.exc_info:
            trace = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = _QUERY.sub("?…", trace), None
        return True


def _guard_library_logs() -> None:
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueries) for f in logger.filters):
            logger.addFilter(_RedactQueries())


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


def _describe(exc: BaseException) -> str:
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


def _validator(headers: requests.structures.CaseInsensitiveDict[str]) -> str | None:
    etag = headers.get("ETag")
    # If-Range needs a strong validator: a weak ETag could splice two versions.
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")


def _status_failure(status: int) -> _Failure:
    if status in (401, 403):
        hint = "sign a fresh URL (or get access) and update the manifest's uri"
        return _Failure(f"signed URL expired or forbidden (HTTP {status})", False, hint)
    if status == 404:
        return _Failure("not found (HTTP 404)", False, "check the manifest's uri")
    # The server's own reason phrase is not shown: it is free text that could echo the URL.
    phrase = next((s.phrase for s in HTTPStatus if s.value == status), "status")
    return _Failure(f"HTTP {status} {phrase}", is_transient(status))


class _HttpBody(io.RawIOBase):
    """One URL's body, read piece by piece, resumed after transient failures."""

    def __init__(self, uri: str, policy: HttpPolicy, session: requests.Session) -> None:
        super().__init__()
        self.name = redact(uri)
        self._uri, self._policy, self._session = uri, policy, session
        self._response: requests.Response | None = None
        self._delivered = 0  # bytes handed to the caller
        self._skip = 0  # bytes of a restarted body still to discard
        self._length: int | None = None  # the whole body's declared size
        self._validator: str | None = None  # the first response's ETag or Last-Modified
        self._failures = 0  # in a row, since the last progress
        self._progress_at = time.monotonic()
        self._connect()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        while True:
            outcome = self._read_piece(min(len(buffer), _PIECE))
            if isinstance(outcome, bytes):
                buffer[: len(outcome)] = outcome
                return len(outcome)
            self._retry_or_raise(outcome)
            self._connect()

    def close(self) -> None:
        self._drop_response()
        super().close()

    def _drop_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _connect(self) -> None:
        while True:
            outcome = self._request()
            if isinstance(outcome, requests.Response):
                self._response = outcome
                return
            self._retry_or_raise(outcome)

    def _retry_or_raise(self, failure: _Failure) -> None:
        """Sleep before the next attempt, or raise when the failure is permanent or too many."""
        self._drop_response()
        if not failure.transient:
            raise SourceError(failure.reason, file=self.name, hint=failure.hint)
        self._failures += 1
        policy = self._policy
        delay = min(policy.backoff * 2 ** (self._failures - 1), policy.max_backoff)
        delay *= random.uniform(0.5, 1.0)  # jitter: workers that failed together retry apart
        waited = time.monotonic() - self._progress_at
        if self._failures >= policy.attempts or waited + delay > policy.max_seconds:
            raise SourceError(
                f"{failure.reason}; gave up after {self._failures} attempt"
                f"{'s' if self._failures > 1 else ''} without progress "
                f"in {waited:.1f} s",
                file=self.name,
                hint="the server keeps failing: try again later, or list another replica",
            )
        log.warning(
            "%s: %s; retrying in %.2f s (attempt %d of %d)",
            self.name, failure.reason, delay, self._failures + 1, policy.attempts,
        )  # fmt: skip
        time.sleep(delay)

    def _request(self) -> requests.Response | _Failure:
        # identity: hash the bytes as stored, never a re-encoding chosen by the server.
        headers = {"Accept-Encoding": "identity"}
        resuming = self._delivered > 0 and self._validator is not None
        if resuming:
            headers["Range"] = f"bytes={self._delivered}-"
            headers["If-Range"] = str(self._validator)
        url = self._uri
        for _ in range(self._policy.max_redirects + 1):
            response = self._get(url, headers)
            if isinstance(response, _Failure):
                return response
            if not response.is_redirect:
                status = response.status_code
                ok = status in (200, 206)
                problem = self._body_problem(response, resuming) if ok else _status_failure(status)
                if problem:
                    response.close()
                return problem or response
            target = urljoin(url, response.headers["Location"])
            response.close()
            problem = redirect_refusal(url, target)
            if problem:
                return _Failure(problem, False, "list a URL on the host that serves the file")
            url = target
        return _Failure(f"more than {self._policy.max_redirects} redirects", False)

    def _get(self, url: str, headers: dict[str, str]) -> requests.Response | _Failure:
        timeout = (self._policy.connect_timeout, self._policy.read_timeout)
        try:
            return self._session.get(
                url, headers=headers, stream=True, allow_redirects=False, timeout=timeout
            )
        except _LIBRARY_ERRORS as exc:
            # Only a description leaves this block: the exception's text holds the full URL.
            return _Failure(_describe(exc), is_transient(exc))

    def _body_problem(self, response: requests.Response, resuming: bool) -> _Failure | None:
        """Check a 200 or 206 against what was already delivered; plan the bytes to skip."""
        length = response.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        validator = _validator(response.headers)
        if response.status_code == 206:
            span = re.fullmatch(
                r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "")
            )
            if not resuming or not span or int(span.group(1)) != self._delivered:
                return _Failure("the server answered with the wrong byte range", False)
            if span.group(2) not in ("*", str(self._length)):
                return _changed()
            self._skip = 0
            return None
        if self._delivered == 0:
            self._length, self._validator = declared, validator
            return None
        if (declared, validator) != (self._length, self._validator):
            return _changed()
        self._skip = self._delivered
        return None

    def _read_piece(self, size: int) -> bytes | _Failure:
        """The next bytes not yet delivered, b"" at the end, or why the body broke off."""
        raw = self._response.raw if self._response is not None else None
        try:
            while raw is not None and self._skip:  # a restarted body: drop what was delivered
                dropped = raw.read(min(self._skip, _PIECE), decode_content=False)
                if not dropped:
                    break
                self._skip -= len(dropped)
            data = (
                raw.read(size, decode_content=False) if raw is not None and not self._skip else b""
            )
        except _LIBRARY_ERRORS as exc:
            return _Failure(_describe(exc), is_transient(exc))
        if data:
            self._delivered += len(data)
            self._failures, self._progress_at = 0, time.monotonic()
            return data
        if self._skip or (self._length is not None and self._delivered < self._length):
            got, expected = self._delivered - self._skip, self._length
            short = urllib3.exceptions.IncompleteRead(got, (expected or got + 1) - got)
            of = f" of {expected}" if expected is not None else ""
            reason = f"the server sent fewer bytes than declared ({got}{of})"
            return _Failure(reason, is_transient(short))
        return b""


def _changed() -> _Failure:
    hint = "run again to stage the new content, after checking the manifest's md5"
    return _Failure("the file changed on the server during the download", False, hint)


@contextmanager
def open_https(uri: str, *, policy: HttpPolicy | None = None) -> Iterator[BinaryIO]:
    """Open an ``http://`` or ``https://`` URI for streaming, as :data:`staging.READERS` expects.

    The reader's ``read(n)`` returns the next bytes of the body or raises: transient failures
    (see :func:`is_transient`) are retried inside it, resuming where the body broke off.

    Args:
        uri: the URL, signed or not; its query string is never shown.
        policy: retry bounds and timeouts; the defaults suit production.

    Raises:
        SourceError: the URL is forbidden or expired (401/403), missing (404), answered another
            client error, redirected to another host, changed during the download, or kept
            failing transiently beyond the policy's bounds.
    """
    _guard_library_logs()
    with requests.Session() as session:
        # urllib3 retrying by itself would log the full URL at WARNING: the retries are ours.
        adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        with io.BufferedReader(_HttpBody(uri, policy or HttpPolicy(), session)) as reader:
            yield reader


def register_readers(*, policy: HttpPolicy | None = None) -> None:
    """Let staging read ``http://`` and ``https://`` sources; call once at startup.

    Args:
        policy: retry bounds and timeouts for every URL read through staging.
    """
    opener = open_https if policy is None else functools.partial(open_https, policy=policy)
    staging.READERS["https"] = staging.READERS["http"] = opener
    _guard_library_logs()
