"""Resolve a manifest's ``uri`` column into what the staging layer reads.

Invariant: :func:`resolve_uri` returns either an absolute, normalised local path (for a relative
path, an absolute path or a ``file://`` URI) or a remote URI unchanged, as its scheme's resolver
in :data:`URI_RESOLVERS` says — or raises :class:`~genoflow.core.errors.SourceError` at stage
``manifest``. No message it raises shows a URI's query string (a signed URL's token).
"""

from __future__ import annotations

import os
import posixpath
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from genoflow.core.errors import SourceError, redact

__all__ = [
    "CONTROL",
    "URI_RESOLVERS",
    "Resolver",
    "resolve_uri",
    "unsafe_character",
    "uri_basename",
]

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters (a subset of what :func:`unsafe_character` finds)."""

# Cc: controls; Cf: format characters, among them the bidi controls (U+202A-U+202E,
# U+2066-U+2069, U+200E/U+200F, U+061C) and zero-width ones (U+200B-U+200D, U+2060, U+FEFF);
# Zl/Zp: line and paragraph separators; Cs: lone surrogates (a JSON "\ud800").
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` that can make it print as something else, or None.

    Control, format (bidi overrides, zero-width), separator and surrogate characters qualify:
    ``"a\u202egpj.bed"`` prints as ``abed.jpg``, and ``"a\u200b.bed"`` as ``a.bed``.

    Returns:
        e.g. ``"U+202E (RIGHT-TO-LEFT OVERRIDE)"``.
    """
    for char in text:
        if unicodedata.category(char) in _UNSAFE_CATEGORIES:
            return f"U+{ord(char):04X} ({unicodedata.name(char, 'a control character')})"
    return None


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

Resolver = Callable[[str, Path], str]
"""Turns a URI (and the manifest's folder) into what the staging layer reads."""


def _redacted(uri: str) -> str:
    try:
        return redact(uri)
    except ValueError:  # urlsplit rejects some netlocs ("[x", ":99999"); show the scheme only
        return uri.split("://", 1)[0] + "://…"


def _resolve_file(uri: str, base: Path) -> str:
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise SourceError("malformed file uri", file=_redacted(uri), stage="manifest") from None
    problem = None
    path = unquote(parts.path, errors="surrogateescape")
    if parts.netloc not in ("", "localhost"):
        problem = "file uri names a remote host; only local files are supported"
    elif parts.query or parts.fragment:
        problem = "file uri must not carry a query or fragment"
    elif not path.startswith("/"):
        problem = "file uri must hold an absolute path (file:///…)"
    elif unsafe := unsafe_character(path):
        problem = f"uri contains {unsafe}"
    if problem:
        raise SourceError(problem, file=_redacted(uri), stage="manifest")
    return os.path.normpath(path)


def _pass_through(uri: str, base: Path) -> str:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        host = None
    if not host:
        raise SourceError("uri has no valid host or bucket", file=_redacted(uri), stage="manifest")
    return uri


def _resolve_drs(uri: str, base: Path) -> str:
    """A ``drs://`` id unchanged once its form (and a compact id's prefix) is known good."""
    from genoflow.core.settings import DrsSettings
    from genoflow.storage.drs import parse_drs_uri

    parse_drs_uri(uri, DrsSettings.from_env())
    return uri


URI_RESOLVERS: dict[str, Resolver] = {
    "file": _resolve_file,
    "http": _pass_through,
    "https": _pass_through,
    "gs": _pass_through,
    "drs": _resolve_drs,
}
"""Scheme → resolver. Remote schemes pass through until readers for them are registered."""


def resolve_uri(uri: str, *, base: Path | str) -> str:
    """Resolve a manifest ``uri`` into what the staging layer reads.

    Args:
        uri: a path relative to ``base``, an absolute path, a ``file://`` URI (percent-encoded),
            or a URI whose scheme is in :data:`URI_RESOLVERS`.
        base: the manifest's folder, absolute; or the ``gs://bucket/prefix`` of a manifest
            kept in a bucket, against which a relative uri becomes an object of that bucket.

    Returns:
        An absolute, normalised local path for local files; other URIs as their resolver says.

    Raises:
        SourceError: unsupported scheme, or a malformed URI (the message never shows a query).
    """
    if unsafe := unsafe_character(uri):
        raise SourceError(f"uri contains {unsafe}", file=_redacted(uri), stage="manifest")
    match = _SCHEME.match(uri)
    if match is None and not uri.lower().startswith("file:"):
        if isinstance(base, str) and base.startswith("gs://") and not uri.startswith("/"):
            return _in_bucket(uri, base)
        return os.path.normpath(os.path.join(base, uri))
    scheme = match.group(1).lower() if match else "file"
    resolver = URI_RESOLVERS.get(scheme)
    if resolver is None:
        raise SourceError(
            f"unsupported uri scheme '{scheme}' in {_redacted(uri)} "
            f"(supported: local paths, {', '.join(sorted(URI_RESOLVERS))})",
            file=_redacted(uri),
            stage="manifest",
        )
    return resolver(uri, base)


def _in_bucket(uri: str, base: str) -> str:
    """``uri`` relative to ``gs://bucket/prefix``, as an object of that bucket."""
    bucket, _, prefix = base.removeprefix("gs://").partition("/")
    key = posixpath.normpath(posixpath.join(prefix, uri))
    if key == "." or key.startswith("../") or key == "..":
        raise SourceError(
            f"relative uri leaves the bucket gs://{bucket}", file=uri, stage="manifest"
        )
    return f"gs://{bucket}/{key}"


def uri_basename(uri: str) -> str:
    """The last path segment of ``uri``, percent-decoded and without a query or fragment.

    A plain path is taken as written: only a URI (a scheme, or ``file:``) is decoded.
    """
    if _SCHEME.match(uri) or uri.lower().startswith("file:"):
        uri = unquote(re.split(r"[?#]", uri, maxsplit=1)[0])
    return uri.rstrip("/").rsplit("/", 1)[-1]
