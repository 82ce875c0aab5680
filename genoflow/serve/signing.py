"""Short-lived HMAC-signed URLs: htsget ticket URLs and viewer links served behind bearer tokens.

A client that follows a ticket may not forward the ``Authorization`` header to the ticket's URLs
(the htsget spec asks it to send only the ticket's own ``headers``), and a browser opening
``/view/{id}`` sends none at all; so when tokens are on, such URLs carry ``?exp=…&sig=…``: an
HMAC-SHA256 of the path and the expiry.

Invariants:
- the key is derived from the tokens file's bytes, so every worker process signs and verifies
  alike with no shared state, and editing the file (revoking a token) voids every signature;
- a signature covers one path and one expiry: it cannot be moved to another file or extended;
- only ``GET``/``HEAD`` of the paths under :data:`SIGNED_PREFIXES` (files, the viewer's page
  and what it loads) accept a signature; ``/links`` (which mints them), ``/jobs``, ``/`` and
  htsget's ticket endpoints never do, so a signed URL cannot mint another;
- signatures are compared in constant time, the MAC before the expiry (an answer says
  "expired" only for a signature this server made); the query string that carries them is
  never logged (the access log omits query strings) and never echoed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from enum import Enum
from pathlib import Path
from urllib.parse import parse_qs

from starlette.types import Scope

TICKET_TTL = 900  # seconds a signed htsget ticket URL stays valid
VIEW_TTL = 3600  # seconds a viewer link (and everything its page loads) stays valid
SIGNED_PREFIXES = ("/data/", "/index/", "/files/", "/view/", "/static/")
SIGNED_PREFIX = SIGNED_PREFIXES[0]  # kept for callers of the first version


class Signature(Enum):
    """What a request's ``?exp=&sig=`` proves."""

    ABSENT = "absent"  # no ``sig`` parameter
    VALID = "valid"  # made by this server for this path, not expired
    EXPIRED = "expired"  # made by this server for this path, expired
    INVALID = "invalid"  # malformed, forged, made for another path, or not accepted here


def _key(tokens_file: Path) -> bytes | None:
    try:
        secret = tokens_file.read_bytes()
    except OSError:
        return None
    return hashlib.sha256(b"genoflow htsget ticket v1\0" + secret).digest()


def _mac(key: bytes, path: str, expires: int) -> str:
    digest = hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(
    tokens_file: Path,
    path: str,
    *,
    now: float | None = None,
    ttl: int = TICKET_TTL,
    expires: int | None = None,
) -> str:
    """The query string (``exp=…&sig=…``) that lets ``path`` through until it expires.

    Args:
        tokens_file: the tokens file the key derives from.
        path: the URL path the signature opens (no query).
        now: the time to count ``ttl`` from (default: now).
        ttl: seconds the signature lasts.
        expires: an expiry (epoch seconds) to use instead of ``now + ttl``, e.g. the one of the
            viewer link whose page hands out the signature, so nothing outlives that link.

    Raises:
        OSError: the tokens file cannot be read (then nothing could be verified either).
    """
    key = _key(tokens_file)
    if key is None:
        raise OSError(f"cannot read {tokens_file}")
    if expires is None:
        expires = int(now if now is not None else time.time()) + ttl
    return f"exp={expires}&sig={_mac(key, path, expires)}"


def signed_query(scope: Scope) -> tuple[str, str] | None:
    """The request's ``(exp, sig)`` parameters, or None when it carries no ``sig``."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "sig" not in query:
        return None
    return query.get("exp", [""])[0], query["sig"][0]


def verify(tokens_file: Path, scope: Scope) -> Signature:
    """What the request's signature proves for its own path and method."""
    found = signed_query(scope)
    if found is None:
        return Signature.ABSENT
    exp, sig = found
    path = scope.get("path", "")
    if not path.startswith(SIGNED_PREFIXES) or scope.get("method") not in ("GET", "HEAD"):
        return Signature.INVALID
    key = _key(tokens_file)
    if key is None or not exp.isdigit() or len(exp) > 12:
        return Signature.INVALID
    if not hmac.compare_digest(_mac(key, path, int(exp)), sig):
        return Signature.INVALID
    return Signature.VALID if int(exp) >= time.time() else Signature.EXPIRED


def expiry(scope: Scope) -> int | None:
    """The expiry of a request that passed by signature (call after :func:`verify` said VALID)."""
    found = signed_query(scope)
    return int(found[0]) if found is not None and found[0].isdigit() else None


def signed_url_check(tokens_file: Path):
    """A token check for ``app.state.token_checks``: a ``GET``/``HEAD`` of a path under
    :data:`SIGNED_PREFIXES` with a valid, unexpired signature passes without a bearer token."""

    def check(scope: Scope) -> bool:
        return verify(tokens_file, scope) is Signature.VALID

    return check
