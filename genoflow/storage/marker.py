"""The artifact marker, ``genoflow.json``: one typed, immutable record of a published artifact.

Invariants:
- :meth:`Marker.from_json` accepts exactly what the cache has always written (every key below,
  with its JSON type) and raises :class:`~genoflow.core.errors.StorageError` naming the missing or
  mistyped key otherwise; unknown keys are kept in ``extra`` so a newer writer's marker survives;
- ``Marker.from_json(d).to_json() == d`` for every accepted ``d``: the JSON on disk, in buckets
  and in the registry keeps its shape, so existing artifacts still load;
- ``details`` stays free-form (each processor records its own facts); the keys genoflow itself
  reads back have typed accessors here, so no caller indexes the raw dictionary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from genoflow.core.errors import StorageError

MARKER = "genoflow.json"
FORMAT_VERSION = 1

# Every key the cache writes, and the JSON type it must have.
_FIELDS: dict[str, type] = {
    "format_version": int,
    "asset": str,
    "source_md5": str,
    "version": str,
    "processor": str,
    "files": list,
    "checksum": str,
    "inputs": list,
    "tools": dict,
    "details": dict,
    "created_at": str,
    "created_by": dict,
}
_ENTRY_FIELDS: dict[str, type] = {"name": str, "size": int, "md5": str}


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact, as recorded in its marker."""

    name: str
    size: int
    md5: str


def content_checksum(entries: list[FileEntry]) -> str:
    """The md5 of a single file, or an md5 over ``name md5`` lines for several."""
    if len(entries) == 1:
        return entries[0].md5
    lines = "".join(f"{e.name} {e.md5}\n" for e in sorted(entries, key=lambda e: e.name))
    return hashlib.md5(lines.encode()).hexdigest()


@dataclass(frozen=True)
class Marker:
    """The parsed ``genoflow.json`` of one artifact (see the module invariants).

    Attributes:
        format_version: the marker format (:data:`FORMAT_VERSION`).
        asset: ``family/asset`` of the artifact's cache key.
        source_md5: the md5 of the source file the artifact was built from.
        version: the processor version in the cache key.
        processor: the dotted name of the function that produced the files.
        files: the artifact's files, main file first.
        checksum: the content checksum over ``files`` (the data version).
        inputs: checksums of the inputs (``{"asset": ..., "checksum": ...}`` each).
        tools: library versions that shaped the bytes.
        details: the processor's free-form facts (format, names, record counts, ...).
        created_at: when it was published, ISO 8601 with a time zone.
        created_by: the publishing host and pid.
        extra: keys this version does not know, kept so that they are written back unchanged.
    """

    format_version: int
    asset: str
    source_md5: str
    version: str
    processor: str
    files: tuple[FileEntry, ...]
    checksum: str
    inputs: tuple[Mapping[str, Any], ...]
    tools: Mapping[str, str]
    details: Mapping[str, Any]
    created_at: str
    created_by: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, *, source: str | None = None) -> Marker:
        """Validate a parsed ``genoflow.json`` and return its marker.

        Args:
            data: the value ``json.loads`` returned.
            source: where it was read (a path or URI), named in the error.

        Raises:
            StorageError: ``data`` is not an object, lacks a key, or a key has the wrong type.
        """
        if not isinstance(data, dict):
            _malformed(f"is a JSON {type(data).__name__}, not an object", source)
        for key, kind in _FIELDS.items():
            if key not in data:
                _malformed(f"has no {key!r}", source)
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                _malformed(f"has a {key!r} that is not a JSON {kind.__name__}", source)
        if not all(isinstance(item, dict) for item in data["inputs"]):
            _malformed("has an 'inputs' item that is not an object", source)
        return cls(
            **{key: data[key] for key in _FIELDS if key not in ("files", "inputs")},
            files=tuple(_entry(item, source) for item in data["files"]),
            inputs=tuple(data["inputs"]),
            extra={key: value for key, value in data.items() if key not in _FIELDS},
        )

    def to_json(self) -> dict[str, Any]:
        """The dictionary written as ``genoflow.json`` (the inverse of :meth:`from_json`)."""
        return {
            **self.extra,
            "format_version": self.format_version,
            "asset": self.asset,
            "source_md5": self.source_md5,
            "version": self.version,
            "processor": self.processor,
            "files": [entry.__dict__.copy() for entry in self.files],
            "checksum": self.checksum,
            "inputs": [dict(item) for item in self.inputs],
            "tools": dict(self.tools),
            "details": dict(self.details),
            "created_at": self.created_at,
            "created_by": dict(self.created_by),
        }

    @property
    def entries(self) -> list[FileEntry]:
        """The files, main file first, as a list."""
        return list(self.files)

    @property
    def size(self) -> int:
        """The bytes of every file together."""
        return sum(entry.size for entry in self.files)

    @property
    def format(self) -> str:
        """The source format (``details['format']``), empty when not recorded."""
        return str(self.details.get("format", ""))

    @property
    def names(self) -> list[str]:
        """The source's file names from the manifest (``details['names']``)."""
        return list(self.details.get("names", []))

    @property
    def records_in(self) -> int:
        """The records the build read (``details['records_in']``; KeyError when not recorded)."""
        return self.details["records_in"]

    @property
    def records_out(self) -> int:
        """The records the build wrote (``details['records_out']``; KeyError when not recorded)."""
        return self.details["records_out"]


def _entry(item: Any, source: str | None) -> FileEntry:
    if not isinstance(item, dict) or set(item) != set(_ENTRY_FIELDS):
        _malformed("has a 'files' item that is not {name, size, md5}", source)
    for key, kind in _ENTRY_FIELDS.items():
        if not isinstance(item[key], kind) or isinstance(item[key], bool):
            _malformed(f"has a file whose {key!r} is not a JSON {kind.__name__}", source)
    return FileEntry(item["name"], item["size"], item["md5"])


def _malformed(problem: str, source: str | None) -> NoReturn:
    raise StorageError(
        f"{MARKER} {problem}",
        file=source,
        stage="cache",
        hint="the artifact is damaged: delete or invalidate it so that it is rebuilt or re-copied",
    )
