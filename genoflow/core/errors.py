"""The project's exceptions: every message names the file, the stage and what to do.

Callers catch :class:`GenoflowError` to report one bad file and carry on with the others;
anything else escaping a stage is a bug.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(uri: str) -> str:
    """Return ``uri`` without its query string or credentials, safe to show anywhere.

    A signed URL's token lives in its query string (``?X-Goog-Signature=…``, ``?token=…``) and
    sometimes in its user-info part; neither may reach a log, metadata or an error message.

    Args:
        uri: a path or URI.

    Returns:
        The URI with any query replaced by ``…`` and any ``user:password@`` removed.
    """
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        # Malformed (bad IPv6 bracket, port out of range): keep only what precedes any query.
        head = uri.split("?", 1)[0].split("#", 1)[0]
        scheme, _, rest = head.partition("://")
        authority, slash, path = rest.partition("/")
        return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}" + (
            "?…" if "?" in uri else ""
        )
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` on one line with every URL in it passed through :func:`redact` (no query
    string, no credentials), the words around the URLs kept: for a message shown to clients."""
    return _URL.sub(lambda match: redact(match.group()), " ".join(text.split()))


class GenoflowError(Exception):
    """A failure the user can act on.

    Args:
        message: what went wrong, in a sentence.
        file: the file (name, path or redacted URI) it concerns.
        stage: the pipeline stage, e.g. ``manifest``, ``stage``, ``sort``, ``index``, ``publish``.
        hint: what to do about it.
    """

    default_stage = "genoflow"
    default_hint = ""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        stage: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = redact(str(file)) if file is not None else None
        self.stage = stage or self.default_stage
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" {self.file}:" if self.file else ""
        text = f"[{self.stage}]{where} {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return text


class ManifestError(GenoflowError):
    """A manifest cannot be read at all (a single bad row is a RowError, not this)."""

    default_stage = "manifest"
    default_hint = "fix the manifest (TSV/CSV with a header row, or a JSON list of objects)"


class FormatError(GenoflowError):
    """A file's format is unknown or its content contradicts its declared format."""

    default_stage = "detect"
    default_hint = "set the manifest's format column to the file's real format, or fix the file"


class ChecksumError(GenoflowError):
    """Staged bytes do not match the manifest's md5 or size."""

    default_stage = "stage"
    default_hint = "check the manifest's md5/size, or replace the corrupt source file"


class SourceError(GenoflowError):
    """A source cannot be read: missing, unreachable, or outside the allowed roots."""

    default_stage = "stage"
    default_hint = "check that the manifest's uri points at a readable file"


class DrsError(SourceError):
    """A ``drs://`` id cannot be resolved or read: its message names the step (resolving the
    object, getting its access URL, reading its bytes)."""

    default_hint = "check the DRS id, and the token and hosts set by GENOFLOW_DRS_*"


class ProcessingError(GenoflowError):
    """A processor (sort, compress, index, convert) failed on a file's content."""

    default_stage = "process"
    default_hint = "the input is malformed; fix or regenerate it and run again"


class StorageError(GenoflowError):
    """The cache could not publish or read an artifact."""

    default_stage = "publish"
    default_hint = "check free space and permissions under GENOFLOW_HOME"
