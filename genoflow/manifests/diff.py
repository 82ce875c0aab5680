"""Read a changed manifest by its new lines only, against the lines of its previous content.

Invariant: a sidecar under ``GENOFLOW_HOME/state/manifest-lines/``, named by the cursor's hash of
one manifest content, lists the lines of that content whose rows were all handled (registered,
their md5 a partition). It is written whole and renamed into place, only for content whose every
md5 was requested, so it is used only if the committed cursor names that content. A changed
manifest's lines found in it are not parsed again; every other line (new, edited, or invalid
before, so it is logged again) is parsed and validated at its own line number. The result is
what a full read gives, less the rows handled before — or the full read itself whenever lines
cannot be told apart (no sidecar or an unreadable one, JSON, a quote character that could join
lines, another header, rows in conflict: a name with two md5s, an md5 with two formats or two
sizes). A line is kept only when the row read from it is visibly on it: its md5 and its name —
for a C2M2 file table, whose names (``id_namespace:local_id filename``) are composed, the
``id_namespace``, ``local_id`` and ``filename`` they are composed of. No Dagster here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genoflow.manifests.c2m2 import is_file_table
from genoflow.manifests.reading import (
    Manifest,
    ManifestRow,
    Md5Lookup,
    conflicts,
    manifest_of_records,
    read_manifest,
    validate_records,
)
from genoflow.manifests.records import parse_table

_VERSION = 2  # 2: a row's key holds its declared size too
RowKey = Sequence[Any]  # name, md5, format, size: what rows are checked against each other by


def line_hash(line: str) -> str:
    """64 bits of BLAKE2b over a line without its end, as 16 hex digits."""
    text = line.rstrip("\r\n").encode("utf-8", "surrogateescape")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


@dataclass(frozen=True)
class HandledLines:
    """The lines of one manifest content whose rows were handled.

    Attributes:
        header: the hash of the header line they were read under.
        base: what their relative uris resolved against.
        rows: line hash → (name, md5, format) of the row on that line.
    """

    header: str
    base: str
    rows: dict[str, RowKey] = field(default_factory=dict)


@dataclass
class ChangedRead:
    """A changed manifest, read.

    Attributes:
        manifest: its rows not handled before (all of them after a full read) and every
            invalid row found.
        incremental: whether only its new lines were read.
        lines: its physical lines, when each is a record by itself.
        folder: what its relative uris resolved against.
        before: the handled lines of the previous content still in it.
    """

    manifest: Manifest
    incremental: bool
    lines: list[str] | None = field(default=None, repr=False)
    folder: str = ""
    before: dict[str, RowKey] = field(default_factory=dict, repr=False)

    def handled(self) -> HandledLines | None:
        """What this content's sidecar holds once the rows read are handled; None when its
        lines cannot stand alone (JSON, quotes), so its next change is read whole.

        Computed on demand: a manifest worked through over several ticks needs it only once.
        """
        return _handled(self.lines, self.folder, self.manifest.rows, self.before)


class SidecarStore:
    """Sidecars of handled lines, one JSON file per manifest content hash.

    Args:
        folder: where they live, e.g. ``GENOFLOW_HOME/state/manifest-lines``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, digest: str) -> Path:
        # Cursor hashes are hex, or "md5:…"/"crc32c:…:size" for a bucket: safe once ":" goes.
        return self.folder / f"{digest.replace(':', '-')}.json"

    def load(self, digest: str | None) -> HandledLines | None:
        """The sidecar of ``digest``; None if there is none or it cannot be trusted."""
        if digest is None:
            return None
        try:
            data = json.loads(self._path(digest).read_text(encoding="utf-8"))
            if data["v"] != _VERSION or data["digest"] != digest:
                return None
            rows = data["rows"]
            # The rename makes a torn file impossible; this catches a hand-edited one, cheaply.
            if not isinstance(rows, dict) or not all(len(key) == 4 for key in rows.values()):
                return None
            return HandledLines(str(data["header"]), str(data["base"]), rows)
        except (OSError, ValueError, TypeError, KeyError):
            return None  # missing or corrupt: the manifest is read whole, which is always right

    def save(self, digest: str, handled: HandledLines) -> None:
        """Write the sidecar of ``digest`` atomically: a sibling temp file, fsync, rename."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(digest)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        data = {
            "v": _VERSION,
            "digest": digest,
            "header": handled.header,
            "base": handled.base,
            "rows": handled.rows,
        }
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                # dumps, not dump: only dumps takes the C encoder (100,000 rows: 0.2 s, not 1.5).
                handle.write(json.dumps(data, separators=(",", ":")))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def discard(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def prune(self, keep: Iterable[str]) -> None:
        """Remove every sidecar (and leftover temp file) but those of ``keep``."""
        if not self.folder.is_dir():
            return
        wanted = {self._path(digest).name for digest in keep}
        for entry in self.folder.iterdir():
            if entry.name not in wanted:
                entry.unlink(missing_ok=True)


def read_changed(
    path: Path,
    previous: HandledLines | None,
    *,
    md5_lookup: Md5Lookup | None = None,
    base: str | None = None,
) -> ChangedRead:
    """Read a changed manifest: its new lines when ``previous`` allows, else all of it.

    Args:
        path: the manifest.
        previous: the handled lines of its previous content, if known.
        md5_lookup: as for :func:`~genoflow.manifests.reading.read_manifest`.
        base: as for :func:`~genoflow.manifests.reading.read_manifest`.

    Raises:
        ManifestError: the manifest cannot be read or parsed at all.
    """
    folder = base or Path(os.path.abspath(path)).parent
    lines = _table_lines(path)
    if lines is not None and previous is not None and previous.base == str(folder):
        header = _header_index(lines)
        if header is not None and line_hash(lines[header]) == previous.header:
            read = _read_new_lines(path, lines, header, previous, md5_lookup, folder)
            if read is not None:
                return read
    if lines is None:  # JSON, quotes, or unreadable: the reader says what is wrong
        manifest = read_manifest(path, md5_lookup=md5_lookup, base=base)
    else:  # the text is read already
        records = parse_table("".join(lines), path)
        manifest = manifest_of_records(path, records, md5_lookup=md5_lookup, base=base)
    return ChangedRead(manifest, False, lines, str(folder))


def _table_lines(path: Path) -> list[str] | None:
    """The physical lines of a TSV/CSV manifest whose every line is a record by itself."""
    if path.suffix.lower() == ".json":
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None  # the full read says what is wrong
    if '"' in text:  # a quoted field may span lines
        return None
    return list(io.StringIO(text, newline=""))  # split as the table reader does


def _header_index(lines: list[str]) -> int | None:
    for index, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            return index
    return None


def _read_new_lines(
    path: Path,
    lines: list[str],
    header: int,
    previous: HandledLines,
    md5_lookup: Md5Lookup | None,
    folder: Path | str,
) -> ChangedRead | None:
    """Parse and validate the lines ``previous`` does not hold; None if rows now conflict."""
    handled: dict[str, RowKey] = {}
    kept: list[RowKey] = []
    masked = []
    for index, line in enumerate(lines):
        digest = line_hash(line) if index > header else ""
        key = previous.rows.get(digest)
        if key is None:
            masked.append(line)
        else:  # a blank line in its place keeps the others' line numbers
            handled[digest] = key
            kept.append(key)
            masked.append("\n")
    records = parse_table("".join(masked), path)
    rows, errors = validate_records(path, records, md5_lookup=md5_lookup, base=str(folder))
    if conflicts([*kept, *(_key(row) for row in rows)]):
        return None  # which rows a conflict drops is the full read's call
    manifest = Manifest(paths=[path], rows=rows, errors=errors)
    return ChangedRead(manifest, True, lines, str(folder), handled)


def _key(row: ManifestRow) -> RowKey:
    return (row.name, row.md5, row.format, row.size)


def _handled(
    lines: list[str] | None, folder: str, rows: list[ManifestRow], before: dict[str, RowKey]
) -> HandledLines | None:
    """The sidecar of this content once ``rows`` are handled, on top of ``before``."""
    if lines is None:
        return None
    header = _header_index(lines)
    if header is None:
        return None
    handled = dict(before)
    named_by = _C2M2_NAMED_BY if _is_c2m2(lines[header]) else None
    for row in rows:
        line = lines[row.line - 1] if row.line <= len(lines) else ""
        # A row not found on its line (the file changed under the full read, or its md5 was
        # looked up in a bucket or a DRS server) is left out, so it is read again on the next
        # change.
        if row.md5 in line.lower() and _named_on(row, line, named_by):
            handled[line_hash(line)] = _key(row)
    return HandledLines(line_hash(lines[header]), folder, handled)


_C2M2_NAMED_BY = ("id_namespace", "local_id", "filename")
"""The C2M2 columns a C2M2 row's name is composed of (see :mod:`genoflow.manifests.c2m2`)."""


def _is_c2m2(header: str) -> bool:
    """Whether a header line is a C2M2 file table's (split on tabs and commas alike: a column
    name holding the other delimiter is no C2M2 column, so it cannot make a table one)."""
    columns = header.replace(",", "\t").split("\t")
    return is_file_table([column.strip().lower() for column in columns])


def _named_on(row: ManifestRow, line: str, named_by: Sequence[str] | None) -> bool:
    """Whether ``line`` shows ``row``'s name, or, in a C2M2 table (``named_by``), every
    column value the name is composed of."""
    if named_by is None:
        return row.name in line
    values = [row.extra.get(column) for column in named_by]
    return all(value is not None and value in line for value in values)
