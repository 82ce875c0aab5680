"""Optional bearer tokens (``GENOFLOW_SERVE_TOKENS``): without a valid one the answer is 401.

The file holds one token per line, optionally followed by its scopes: ``token`` or
``token read`` may read; ``token publish`` (or ``token read,publish``) may also push artifacts
to this node (:mod:`genoflow.serve.publish`). Blank lines and ``#`` comments are skipped.

Invariants:
- a token is compared only as a SHA-256 digest, with :func:`hmac.compare_digest`, against every
  allowed digest (no early exit), so timing tells nothing about how much of a token matched;
- a bare token line means ``read``, as every tokens file written before scopes did; ``publish``
  implies ``read``; a line naming an unknown scope stops the server at startup (naming its line
  number, never its token) and grants nothing when it appears in a later reload;
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

READ, PUBLISH = "read", "publish"
SCOPES = frozenset({READ, PUBLISH})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_line(line: str) -> tuple[str, frozenset[str]] | None:
    """A tokens-file line's token and scopes (``publish`` implies ``read``); None for a blank
    or comment line.

    Raises:
        ValueError: the line names a scope other than ``read`` and ``publish`` (the message
            names the scope, never the token).
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    token, *rest = text.split(None, 1)
    words = " ".join(rest).replace(",", " ").split()
    named = set(words)
    unknown = sorted(named - SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (use read or publish)")
    return token, frozenset(named | {READ})


class Tokens:
    """The bearer tokens a tokens file allows, with their scopes (see the module docstring).

    Args:
        path: the tokens file.

    Raises:
        ConfigError: the file cannot be read, or a line names an unknown scope.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: tuple[tuple[bytes, frozenset[str]], ...] = ()
        self._problem: str | None = None
        if not self._reload():
            raise ConfigError(
                "the tokens file cannot be read",
                file=f"GENOFLOW_SERVE_TOKENS={path}",
                hint="create it with one token per line, readable by the server, or unset "
                "GENOFLOW_SERVE_TOKENS to serve without authentication",
            )
        if self._problem is not None:
            raise ConfigError(
                self._problem,
                file=f"GENOFLOW_SERVE_TOKENS={path}",
                hint="write each line as 'token' or 'token read,publish'",
            )

    def _reload(self) -> bool:
        """Re-read the file when it changed; False when it cannot be read (nothing allowed)."""
        try:
            found = os.stat(self.path)
        except OSError:
            self._entries, self._stamp = (), None
            return False
        stamp = (found.st_mtime_ns, found.st_size)
        if stamp == self._stamp:
            return True
        with self._lock:
            try:
                text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
            except OSError:
                self._entries, self._stamp = (), None
                return False
            self._entries, self._problem = self._parse(text)
            self._stamp = stamp
        return True

    @staticmethod
    def _parse(text: str) -> tuple[tuple[tuple[bytes, frozenset[str]], ...], str | None]:
        entries, problem = [], None
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                parsed = parse_line(line)
            except ValueError as exc:
                problem = problem or f"line {number}: {exc}"
                continue  # a line that cannot be understood grants nothing
            if parsed is not None:
                entries.append((_digest(parsed[0]), parsed[1]))
        return tuple(entries), problem

    def scopes(self, token: str) -> frozenset[str]:
        """The scopes ``token`` holds (empty when it is none of the file's tokens); every
        allowed digest is compared, in constant time each."""
        self._reload()
        presented = _digest(token)
        held: frozenset[str] = frozenset()
        for allowed, scopes in self._entries:
            if hmac.compare_digest(presented, allowed):
                held = held | scopes
        return held

    def allows(self, token: str, scope: str = READ) -> bool:
        """Whether ``token`` is one of the file's tokens and holds ``scope`` (``read``: any)."""
        return scope in self.scopes(token)


def bearer(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
