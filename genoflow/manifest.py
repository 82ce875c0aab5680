"""Read manifests (TSV, CSV or JSON) into validated rows.

Invariant: every row of a readable manifest comes out either as a :class:`ManifestRow` whose
name is a safe file name, whose md5 is 32 lower-case hex digits, whose format is canonical and
whose uri is resolved — or as a :class:`RowError` that names ``file:line`` and the reason. One
bad row never stops the others; only a manifest that cannot be parsed at all raises
:class:`~genoflow.errors.ManifestError`.

Line numbers: for TSV/CSV, the physical line where the row starts (the header is usually 1;
blank and ``#`` lines count). For JSON, the 1-based index of the object in the list, shown as
``demo.json:#3``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genoflow.errors import GenoflowError, ManifestError
from genoflow.formats import FAMILY, FORMATS, Family, format_from_name, normalize_format
from genoflow.uris import CONTROL, URI_RESOLVERS, Resolver, resolve_uri, uri_basename

__all__ = [
    "REQUIRED",
    "URI_RESOLVERS",
    "Manifest",
    "ManifestRow",
    "Resolver",
    "RowError",
    "read_manifest",
    "read_manifests",
    "resolve_uri",
]

REQUIRED = ("name", "uri", "md5")
_KNOWN = frozenset((*REQUIRED, "format", "size"))
_MD5 = re.compile(r"[0-9a-f]{32}")
_INT = re.compile(r"-?[0-9]+")

_Record = tuple[int, "dict[str, str] | str"]  # (line, fields) or (line, reason it is unusable)


def _where(manifest: Path, line: int) -> str:
    marker = "#" if manifest.suffix.lower() == ".json" else ""
    return f"{manifest}:{marker}{line}"


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One valid manifest row.

    Attributes:
        manifest: the manifest's path, as given to :func:`read_manifest`.
        line: where the row starts (see the module docstring).
        uri: the resolved location: an absolute local path, or a remote URI unchanged.
        md5: 32 lower-case hex digits.
        format: the canonical format; ``family`` follows from it.
        extra: the other columns, keyed by lower-cased column name.
    """

    manifest: Path
    line: int
    name: str
    uri: str
    md5: str
    format: str
    family: Family
    size: int | None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def location(self) -> str:
        """Return ``manifest:line`` (``manifest:#index`` for JSON)."""
        return _where(self.manifest, self.line)


@dataclass(frozen=True)
class RowError:
    """A row that was dropped, and why."""

    manifest: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{_where(self.manifest, self.line)}: {self.reason}"


@dataclass
class Manifest:
    """Valid rows and row errors of one or more manifests."""

    paths: list[Path]
    rows: list[ManifestRow]
    errors: list[RowError]

    def sources(self) -> dict[str, list[ManifestRow]]:
        """Group rows by md5 (replicas of one source), in first-seen order."""
        groups: dict[str, list[ManifestRow]] = {}
        for row in self.rows:
            groups.setdefault(row.md5, []).append(row)
        return groups


def read_manifest(path: str | Path) -> Manifest:
    """Read one manifest; see :func:`read_manifests`."""
    return read_manifests([path])


def read_manifests(paths: Iterable[str | Path]) -> Manifest:
    """Read manifests and validate their rows together.

    A row is dropped (and reported) when a required field (name, uri, md5) is missing, the md5
    is malformed, the format is unknown, the name is not a safe file name, the size is not a
    whole number of bytes, or the uri is unsupported. Across all the manifests, a name given
    two different md5s drops *every* row with that name (which one is right cannot be told);
    rows whose md5 was already seen with another format are dropped, the first one kept.

    Raises:
        ManifestError: a manifest cannot be read or parsed at all (the first such one).
    """
    manifests = [Path(path) for path in paths]
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    for manifest in manifests:
        base = Path(os.path.abspath(manifest)).parent
        for line, fields in _load(manifest):
            outcome = _validate(fields, manifest=manifest, line=line, base=base)
            (rows if isinstance(outcome, ManifestRow) else errors).append(outcome)
    rows, conflicts = _cross_check(rows)
    order = {manifest: index for index, manifest in enumerate(manifests)}
    errors = sorted([*errors, *conflicts], key=lambda error: (order[error.manifest], error.line))
    return Manifest(paths=manifests, rows=rows, errors=errors)


def _load(path: Path) -> list[_Record]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError("manifest not found", file=str(path), hint="check the path") from None
    except OSError as exc:
        raise ManifestError(
            f"cannot read it ({exc.strerror or exc})",
            file=str(path),
            hint="check that the path is a readable file",
        ) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"not UTF-8: byte 0x{data[exc.start]:02x} on line {line}",
            file=str(path),
            hint="save the manifest as UTF-8",
        ) from None
    if path.suffix.lower() == ".json":
        return _read_json(text, path)
    return _read_table(text, path)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key[:60]!r} in an object")
        obj[key] = value
    return obj


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def _read_json(text: str, path: Path) -> list[_Record]:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ManifestError(f"not valid JSON: {exc.msg} ({where})", file=str(path)) from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"not valid JSON: {exc}", file=str(path)) from None
    if not isinstance(data, list):
        kind = type(data).__name__
        raise ManifestError(
            f"a JSON manifest must be a list of objects, not a {kind}", file=str(path)
        )
    records: list[_Record] = []
    for index, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise ManifestError(f"item #{index} is a {kind}, not an object", file=str(path))
        fields: dict[str, str] | str = {}
        for key, value in item.items():
            column = key.strip().lower()
            if column in fields:
                fields = f"field {column[:60]!r} is given twice (names are case-insensitive)"
                break
            fields[column] = _text(value)
        records.append((index, fields))
    return records


class _Lines:
    """Feeds csv.reader physical lines, skipping blank and ``#`` lines between records."""

    def __init__(self, text: str) -> None:
        self._lines = enumerate(io.StringIO(text, newline=""), start=1)
        self.at_boundary = True
        self.first = 0  # physical line where the current record starts

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        for number, line in self._lines:
            if self.at_boundary:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                self.first = number
            self.at_boundary = False
            return line
        raise StopIteration


def _delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return "\t" if suffix == ".tsv" else ","
    for line in io.StringIO(text, newline=""):
        if line.strip() and not line.lstrip().startswith("#"):
            return "," if "," in line and "\t" not in line else "\t"
    return "\t"


def _read_table(text: str, path: Path) -> list[_Record]:
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=_delimiter(path, text), strict=True)
    header: list[str] | None = None
    records: list[_Record] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            reason = str(exc).replace("\t", "\\t")  # csv names the delimiter literally
            if header is None:
                raise ManifestError(f"unreadable header: {reason}", file=str(path)) from None
            records.append((lines.first, f"unparseable row: {reason}"))
            continue
        finally:
            lines.at_boundary = True
        if header is None:
            header = _header(fields, path)
        elif len(fields) > len(header) and any(value.strip() for value in fields[len(header) :]):
            records.append((lines.first, f"{len(fields)} fields but the header has {len(header)}"))
        else:
            records.append((lines.first, dict(zip(header, fields, strict=False))))
    if header is None:
        raise ManifestError(
            "no header row (the file is empty or holds only comments)", file=str(path)
        )
    return records


def _header(fields: list[str], path: Path) -> list[str]:
    header = [column.strip().lower() for column in fields]
    problem = None
    if "" in header:
        problem = f"header column {header.index('') + 1} has no name"
    elif len(set(header)) < len(header):
        twice = sorted({column for column in header if header.count(column) > 1})
        problem = f"header repeats column(s) {', '.join(twice)} (names are case-insensitive)"
    elif missing := [column for column in REQUIRED if column not in header]:
        problem = f"header lacks required column(s) {', '.join(missing)}"
    if problem:
        raise ManifestError(
            f"{problem}; found {', '.join(header)[:200]}",
            file=str(path),
            hint="the header needs name, uri and md5 (format, size and other columns optional)",
        )
    return header


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "…")


def _name_problem(name: str) -> str | None:
    if CONTROL.search(name):
        return f"name {_show(name)} contains a control character"
    if "/" in name or "\\" in name:
        return f"name {_show(name)} contains a path separator (a file name, not a path, is needed)"
    if name.startswith("."):
        return f"name {_show(name)} starts with '.'"
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        return "name is longer than 255 bytes"
    return None


def _format(declared: str, name: str, uri: str) -> tuple[str | None, str | None]:
    """Return (format, None) or (None, reason)."""
    if declared:
        try:
            return normalize_format(declared), None
        except GenoflowError:
            return None, f"unknown format {_show(declared)} (known: {', '.join(FORMATS)})"
    fmt = format_from_name(name) or format_from_name(uri_basename(uri))
    if fmt is None:
        return (
            None,
            "unknown format: set the format column (neither name nor uri has a known suffix)",
        )
    return fmt, None


def _size(text: str) -> tuple[int | None, str | None]:
    if not text:
        return None, None
    if not _INT.fullmatch(text) or len(text) > 20:
        return None, f"size {_show(text)} is not a whole number of bytes"
    size = int(text)
    return (None, f"negative size {size}") if size < 0 else (size, None)


def _missing(name: str, uri: str, md5: str) -> str | None:
    if name and uri and md5:
        return None
    missing = [
        column for column, value in zip(REQUIRED, (name, uri, md5), strict=True) if not value
    ]
    return f"missing required field(s) {', '.join(missing)}"


def _resolve(uri: str, base: Path) -> tuple[str, str | None]:
    try:
        return resolve_uri(uri, base=base), None
    except GenoflowError as exc:
        return "", exc.message


def _validate(
    fields: dict[str, str] | str, *, manifest: Path, line: int, base: Path
) -> ManifestRow | RowError:
    if isinstance(fields, str):
        return RowError(manifest, line, fields)
    values = {column: value.strip() for column, value in fields.items()}
    name, uri, md5 = values.get("name", ""), values.get("uri", ""), values.get("md5", "").lower()
    resolved, uri_problem = _resolve(uri, base) if uri else ("", None)
    # With neither name nor uri, "missing required fields" already says enough.
    fmt, format_problem = (
        _format(values.get("format", ""), name, uri) if name or uri else ("", None)
    )
    size, size_problem = _size(values.get("size", ""))
    problems = (
        _missing(name, uri, md5),
        _name_problem(name) if name else None,
        f"malformed md5 {_show(values['md5'])} (need 32 hex digits)"
        if md5 and not _MD5.fullmatch(md5)
        else None,
        uri_problem,
        format_problem,
        size_problem,
    )
    if not fmt or any(problems):
        return RowError(manifest, line, "; ".join(problem for problem in problems if problem))
    extra = {column: value for column, value in values.items() if column not in _KNOWN}
    return ManifestRow(manifest, line, name, resolved, md5, fmt, FAMILY[fmt], size, extra)


def _cross_check(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[RowError]]:
    """Drop every row of a name with two md5s, then rows whose md5 was seen with another format."""
    md5_of: dict[str, str] = {}
    by_name: dict[str, list[ManifestRow]] = {}  # only names given two md5s
    for row in rows:
        if md5_of.setdefault(row.name, row.md5) != row.md5:
            by_name[row.name] = []
    for row in rows:
        if row.name in by_name:
            by_name[row.name].append(row)
    errors: list[RowError] = []
    kept: list[ManifestRow] = []
    first_of: dict[str, ManifestRow] = {}
    for row in rows:
        if row.name in by_name:
            same_name = by_name[row.name]
            listing = ", ".join(f"{other.md5} at {other.location()}" for other in same_name[:4])
            more = f" and {len(same_name) - 4} more" if len(same_name) > 4 else ""
            reason = f"name {_show(row.name)} has conflicting md5s ({listing}{more}); all dropped"
            errors.append(RowError(row.manifest, row.line, reason))
            continue
        first = first_of.setdefault(row.md5, row)
        if first.format != row.format:
            reason = f"md5 {row.md5} is {row.format} here but {first.format} at {first.location()}"
            errors.append(RowError(row.manifest, row.line, reason))
            continue
        kept.append(row)
    return kept, errors
