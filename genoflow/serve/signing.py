"""Short-lived HMAC-signed ``/data`` URLs, for htsget tickets served behind bearer tokens.

A client that follows a ticket may not forward the ``Authorization`` header to the ticket's URLs
(the htsget spec asks it to send only the ticket's own ``headers``), so when tokens are on, each
ticket URL carries ``?exp=…&sig=…``: an HMAC-SHA256 of the path and the expiry.

Invariants:
- the key is derived from the tokens file's bytes, so every worker process signs and verifies
  alike with no shared state, and editing the file (revoking a token) voids every signature;
- a signature covers one path and one expiry: it cannot be moved to another file or extended;
- signatures are compared in constant time; the query string that carries them is never logged
  (the access log omits query strings) and never echoed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from urllib.parse import parse_qs

from starlette.types import Scope

TICKET_TTL = 900  # seconds a signed ticket URL stays valid
SIGNED_PREFIX = "/data/"


def _key(tokens_file: Path) -> bytes | None:
    try:
        secret = tokens_file.read_bytes()
    except OSError:
        return None
    return hashlib.sha256(b"genoflow htsget ticket v1\0" + secret).digest()


def _mac(key: bytes, path: str, expires: int) -> str:
    digest = hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(tokens_file: Path, path: str, *, now: float | None = None) -> str:
    """The query string (``exp=…&sig=…``) that lets ``path`` through until it expires.

    Raises:
        OSError: the tokens file cannot be read (then nothing could be verified either).
    """
    key = _key(tokens_file)
    if key is None:
        raise OSError(f"cannot read {tokens_file}")
    expires = int(now if now is not None else time.time()) + TICKET_TTL
    return f"exp={expires}&sig={_mac(key, path, expires)}"


def signed_url_check(tokens_file: Path):
    """A token check for ``app.state.token_checks``: a ``/data`` request with a valid, unexpired
    signature passes without a bearer token."""

    def check(scope: Scope) -> bool:
        path = scope.get("path", "")
        if not path.startswith(SIGNED_PREFIX) or scope.get("method") not in ("GET", "HEAD"):
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        exp, sig = query.get("exp", [""])[0], query.get("sig", [""])[0]
        if not exp.isdigit() or not sig or int(exp) < time.time():
            return False
        key = _key(tokens_file)
        return key is not None and hmac.compare_digest(_mac(key, path, int(exp)), sig)

    return check
