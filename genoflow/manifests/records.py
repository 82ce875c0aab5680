"""Parse one manifest file (TSV, CSV or JSON) into raw records, one per row.

Invariant: a readable manifest becomes a list of ``(line, fields)`` records, in file order, whose
column names are stripped and lower-cased and unique — or ``(line, reason)`` for a row that cannot
be used as it stands (a CSV quoting error, too many fields, a repeated JSON field). A bad row never
stops the others; only a manifest that cannot be read, decoded or parsed at all (no usable header
row, JSON that is not a list of objects) raises :class:`~genoflow.core.errors.ManifestError`. Line
numbers follow :mod:`genoflow.manifests.reading`'s conventions. Values are validated there, not
here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genoflow.core.checksums import open_regular
from genoflow.core.errors import ManifestError
from genoflow.manifests import c2m2

__all__ = ["REQUIRED", "Record", "load_records"]

REQUIRED = ("name", "uri", "md5")
FIELD_LIMIT = 131072
"""The longest field a manifest may hold, in characters: Python's csv default, applied to
JSON manifests too. No column needs it; metadata that long belongs in a file of its own."""

Record = tuple[int, "dict[str, str] | str"]
"""``(line, fields)``, or ``(line, reason it is unusable)``."""


def load_records(path: Path) -> list[Record]:
    """Read and parse one manifest; JSON by its ``.json`` suffix, else TSV or CSV.

    Raises:
        ManifestError: the file is missing, unreadable, not UTF-8, or not parseable at all.
    """
    try:
        with open_regular(path) as handle:  # a FIFO or device is refused, never waited on
            data = handle.read()
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
    return parse_table(text, path)


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


def _read_json(text: str, path: Path) -> list[Record]:
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
    records: list[Record] = []
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
        if isinstance(fields, dict) and any(len(value) > FIELD_LIMIT for value in fields.values()):
            fields = _too_long()
        records.append((index, fields))
    return records


def _too_long() -> str:
    return (
        f"a field is longer than {FIELD_LIMIT} characters — shorten it (long metadata belongs "
        "in a file the row points at); in TSV/CSV, a quote left open also runs a field on over "
        "the next lines"
    )


def _csv_problem(exc: csv.Error, what: str) -> str:
    reason = str(exc)
    if reason.startswith("field larger than field limit"):
        return f"{what}: {_too_long()}"
    return f"{what}: " + reason.replace("\t", "\\t")  # csv names the delimiter literally


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


def parse_table(text: str, path: Path) -> list[Record]:
    """The records of a CSV/TSV manifest's text (delimiter from ``path``'s suffix or the text)."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=_delimiter(path, text), strict=True)
    header: list[str] | None = None
    convert: c2m2.Converter | None = None  # a C2M2 file table's rows become manifest records
    records: list[Record] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                reason = _csv_problem(exc, "unreadable header")
                raise ManifestError(reason, file=str(path)) from None
            records.append((lines.first, _csv_problem(exc, "unparseable row")))
            continue
        finally:
            lines.at_boundary = True
        if header is None:
            header = _header(fields, path)
            convert = c2m2.row_converter(path) if c2m2.is_file_table(header) else None
        elif len(fields) > len(header) and any(value.strip() for value in fields[len(header) :]):
            records.append((lines.first, f"{len(fields)} fields but the header has {len(header)}"))
        else:
            record = dict(zip(header, fields, strict=False))
            records.append((lines.first, convert(record, lines.first) if convert else record))
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
    elif not c2m2.is_file_table(header) and (
        missing := [column for column in REQUIRED if column not in header]
    ):
        problem = f"header lacks required column(s) {', '.join(missing)}"
    if problem:
        raise ManifestError(
            f"{problem}; found {', '.join(header)[:200]}",
            file=str(path),
            hint="the header needs name, uri and md5 (format, size and other columns optional), "
            "or a C2M2 file table's id_namespace, local_id, project_id_namespace, "
            "project_local_id and filename",
        )
    return header
