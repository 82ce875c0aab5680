"""One HTTP(S) response body, read piece by piece and resumed after transient failures.

Invariant: the bytes :class:`HttpBody` hands out are exactly the server's body, in order, each once.
After a transient failure mid-body it resumes at the first byte not yet delivered: a ``Range``
request guarded by ``If-Range`` when the server gave an ETag or Last-Modified, or else a fresh
request whose already-delivered bytes are read and discarded. A body that changed on the server
meanwhile, or that ends before its ``Content-Length``, raises
:class:`~genoflow.core.errors.SourceError`; so does a permanent failure, or transient ones beyond
the :class:`~genoflow.storage.http_policy.HttpPolicy` bounds. No library exception (whose text holds
the full URL) is ever chained to what it raises.
"""

from __future__ import annotations

import io
import logging
import random
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urljoin

import requests
import urllib3

from genoflow.core.errors import SourceError, redact
from genoflow.storage.http_policy import (
    LIBRARY_ERRORS,
    HttpPolicy,
    describe,
    is_transient,
    redirect_refusal,
)

__all__ = ["HttpBody"]

# Retries are reported under the public reader's name, the logger deployments configure.
log = logging.getLogger("genoflow.storage.https")

# Small reads keep progress fine-grained: a dropped connection loses at most one piece.
_PIECE = 1 << 16


@dataclass(frozen=True)
class _Failure:
    reason: str
    transient: bool
    hint: str | None = None


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


class HttpBody(io.RawIOBase):
    """One URL's body, read piece by piece, resumed after transient failures.

    The first request is made on construction; wrap it in :class:`io.BufferedReader` to read.

    Args:
        uri: the URL, signed or not; only its redacted form is kept in ``name``.
        policy: retry bounds and timeouts.
        session: the session to send requests with; the caller closes it.
    """

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

    @property
    def length(self) -> int | None:
        """The body's size as the server declared it (Content-Length), when it did."""
        return self._length

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
        except LIBRARY_ERRORS as exc:
            # Only a description leaves this block: the exception's text holds the full URL.
            return _Failure(describe(exc), is_transient(exc))

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
        except LIBRARY_ERRORS as exc:
            return _Failure(describe(exc), is_transient(exc))
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
