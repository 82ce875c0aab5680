"""Optional bearer tokens (``GENOFLOW_SERVE_TOKENS``): without a valid one the answer is 401.

Invariants:
- a token is compared only as a SHA-256 digest, with :func:`hmac.compare_digest`, against every
  allowed digest (no early exit), so timing tells nothing about how much of a token matched;
- the file is read again when its modification time or size changes, so revoking a token needs no
  restart; a file that cannot be read at startup stops the server, and one that becomes
  unreadable later refuses every request (closed, not open);
- a token is never logged, echoed in an answer, or kept in clear beyond the parse.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path

from starlette.datastructures import Headers

from genoflow.core.settings import ConfigError


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Tokens:
    """The bearer tokens a tokens file allows: one per line, blank lines and ``#`` comments
    skipped.

    Args:
        path: the tokens file.

    Raises:
        ConfigError: the file cannot be read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._digests: tuple[bytes, ...] = ()
        if not self._reload():
            raise ConfigError(
                "the tokens file cannot be read",
                file=f"GENOFLOW_SERVE_TOKENS={path}",
                hint="create it with one token per line, readable by the server, or unset "
                "GENOFLOW_SERVE_TOKENS to serve without authentication",
            )

    def _reload(self) -> bool:
        """Re-read the file when it changed; False when it cannot be read (nothing allowed)."""
        try:
            found = os.stat(self.path)
        except OSError:
            self._digests, self._stamp = (), None
            return False
        stamp = (found.st_mtime_ns, found.st_size)
        if stamp == self._stamp:
            return True
        with self._lock:
            try:
                text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
            except OSError:
                self._digests, self._stamp = (), None
                return False
            lines = (line.strip() for line in text.splitlines())
            self._digests = tuple(_digest(t) for t in lines if t and not t.startswith("#"))
            self._stamp = stamp
        return True

    def allows(self, token: str) -> bool:
        """Whether ``token`` is one of the file's tokens (constant time per token)."""
        self._reload()
        presented = _digest(token)
        matched = False
        for allowed in self._digests:
            matched |= hmac.compare_digest(presented, allowed)
        return matched


def bearer(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
