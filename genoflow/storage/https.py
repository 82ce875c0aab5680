"""Reading sources over HTTP(S), signed URLs included, without ever revealing their token.

Invariants:

- A signed URL's query string is a credential. It never reaches a log record, an exception
  message or an exception chain: every library error becomes a :class:`SourceError` built from
  :func:`~genoflow.core.errors.redact`, raised outside the ``except`` block so no URL-carrying
  exception is chained, and urllib3's loggers get a filter that strips query strings.
- The bytes handed to the caller are exactly the server's body, in order, each once. After a
  transient failure mid-body the download *resumes* at the first byte not yet delivered: a
  ``Range`` request guarded by ``If-Range`` when the server gave an ETag or Last-Modified, or else
  a fresh request whose already-delivered bytes are read and discarded. A body that changed on
  the server meanwhile, or that ends before its ``Content-Length``, is an error, never a file.
- Only what :func:`is_transient` accepts is retried, with exponential backoff bounded by
  :attr:`HttpPolicy.attempts` and :attr:`HttpPolicy.max_seconds`; urllib3's own retries are off.

The retry and redirect rules live in :mod:`genoflow.storage.http_policy` (re-exported here) and
the resuming body in :mod:`genoflow.storage.http_body`; this module opens readers for staging
and keeps library logs free of query strings.
"""

from __future__ import annotations

import functools
import io
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import BinaryIO

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from genoflow.storage import staging
from genoflow.storage.http_body import HttpBody
from genoflow.storage.http_policy import HttpPolicy, is_transient, redirect_refusal

__all__ = ["HttpPolicy", "is_transient", "open_https", "redirect_refusal", "register_readers"]

_LIBRARY_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager",
                    "urllib3.response", "urllib3.util.retry", "requests")  # fmt: skip
_QUERY = re.compile(r"\?[^\s\"'<>]+")


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


@contextmanager
def open_https(
    uri: str, *, policy: HttpPolicy | None = None, headers: Mapping[str, str] | None = None
) -> Iterator[BinaryIO]:
    """Open an ``http://`` or ``https://`` URI for streaming, as :data:`staging.READERS` expects.

    The reader's ``read(n)`` returns the next bytes of the body or raises: transient failures
    (see :func:`is_transient`) are retried inside it, resuming where the body broke off.

    Args:
        uri: the URL, signed or not; its query string is never shown.
        policy: retry bounds and timeouts; the defaults suit production.
        headers: sent with every request (a DRS access URL's own headers, a bearer token);
            redirects stay on the same host, so they never reach another. Never logged.

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
        session.headers.update(headers or {})
        with io.BufferedReader(HttpBody(uri, policy or HttpPolicy(), session)) as reader:
            yield reader


def register_readers(*, policy: HttpPolicy | None = None) -> None:
    """Let staging read ``http://``, ``https://`` and ``drs://`` sources; call once at startup.

    Args:
        policy: retry bounds and timeouts for every URL read through staging.
    """
    from genoflow.storage import drs  # drs reads its bytes through this module

    opener = open_https if policy is None else functools.partial(open_https, policy=policy)
    staging.READERS["https"] = staging.READERS["http"] = opener
    staging.READERS["drs"] = functools.partial(drs.open_drs, policy=policy or HttpPolicy())
    _guard_library_logs()
