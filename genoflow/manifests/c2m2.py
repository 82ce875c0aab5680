"""Read a CFDE C2M2 ``file.tsv`` as a genoflow manifest, as it comes.

A table is a C2M2 file table when its header holds the file table's key columns
(:data:`KEY_COLUMNS`); :func:`row_converter` then turns each of its rows into an ordinary
manifest record — ``name``, ``uri``, ``md5``, ``format``, ``size`` — keeping every C2M2 column
beside them as metadata, or into the reason the row cannot be used.

Invariants:

- the name is ``id_namespace:local_id`` followed by `` filename`` (a ``/`` or ``\\`` in it is
  percent-encoded, so it stays one file name);
- the uri is the ``access_url`` when genoflow can read it (https, gs, file, drs, a path), else a
  ``drs://`` or ``https://`` ``persistent_id``; a row with neither is an error, never a guess;
- the format comes from the EDAM ``file_format`` term (:data:`EDAM_FORMATS`, checked against the
  vendored EDAM release in ``edam_formats.tsv``); an unmapped or empty term falls back to the
  file name, then the content of a local file, and says so in the row's ``c2m2_warning``;
- a term the content of a local file contradicts is a row error. The table is read line by
  line with the manifest reader's csv parser: linear, no second pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from genoflow.core import formats
from genoflow.core.errors import FormatError, GenoflowError, redact
from genoflow.core.settings import ConfigError, Settings
from genoflow.manifests.uris import resolve_uri, uri_basename

__all__ = [
    "C2M2_COLUMNS",
    "EDAM_FORMATS",
    "EDAM_RELEASE",
    "KEY_COLUMNS",
    "WARNING_KEY",
    "edam_curie",
    "is_file_table",
    "row_converter",
]

C2M2_COLUMNS = (
    "id_namespace", "local_id", "project_id_namespace", "project_local_id", "persistent_id",
    "creation_time", "size_in_bytes", "uncompressed_size_in_bytes", "sha256", "md5",
    "filename", "file_format", "compression_format", "data_type", "assay_type",
    "analysis_type", "mime_type", "bundle_collection_id_namespace",
    "bundle_collection_local_id", "dbgap_study_id", "access_url",
)  # fmt: skip
"""The C2M2 ``file`` table's columns, in the specification's order (``access_url`` is the
newest; older tables stop at ``dbgap_study_id`` and must then rely on ``persistent_id``)."""

KEY_COLUMNS = frozenset(
    ("id_namespace", "local_id", "project_id_namespace", "project_local_id", "filename")
)
"""The columns the C2M2 schema requires of every file table: a header holding them all is one."""

EDAM_RELEASE = "1.25"

EDAM_FORMATS: Mapping[str, tuple[str, str]] = {
    "format:2572": ("bam", "BAM"),
    "format:2573": ("sam", "SAM"),
    "format:3016": ("vcf", "VCF"),
    "format:3003": ("bed", "BED"),
    "format:3584": ("bed", "bedstrict"),
    "format:3585": ("bed", "bed6"),
    "format:3586": ("bed", "bed12"),
    "format:1975": ("gff3", "GFF3"),
    "format:2306": ("gtf", "GTF"),
    "format:3004": ("bigBed", "bigBed"),
    "format:3006": ("bigWig", "bigWig"),
    "format:3752": ("csv", "CSV"),
    "format:3475": ("tsv", "TSV"),
    "format:3613": ("narrowPeak", "ENCODE narrow peak format"),
    "format:3614": ("broadPeak", "ENCODE broad peak format"),
}
"""EDAM format term → (genoflow format, the term's preferred label in EDAM :data:`EDAM_RELEASE`)."""

EDAM_COMPRESSIONS: Mapping[str, str] = {"format:3989": "GZIP format", "format:3615": "bgzip"}
"""``compression_format`` terms genoflow reads (it detects plain, gzip and BGZF by content)."""

WARNING_KEY = "c2m2_warning"
"""The record field saying how a row's format was found when its term did not say it."""

_EDAM_IRI = re.compile(r"(?:https?://edamontology\.org/|edam:)?format[_:](\d+)", re.IGNORECASE)
_ACCESS_SCHEMES = ("https://", "gs://", "file:", "drs://")
_PERSISTENT_SCHEMES = ("drs://", "https://")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

Converter = Callable[[dict[str, str], int], "dict[str, str] | str"]


def is_file_table(header: Sequence[str]) -> bool:
    """Whether a (lower-cased) header is a C2M2 file table's."""
    return KEY_COLUMNS.issubset(header)


def edam_curie(term: str) -> str | None:
    """``format:NNNN`` for an EDAM format term written as a CURIE or an IRI, else None."""
    match = _EDAM_IRI.fullmatch(term.strip())
    return f"format:{int(match.group(1)):04d}" if match else None


def row_converter(manifest: Path) -> Converter:
    """A function turning one row of the C2M2 file table ``manifest`` into a manifest record.

    It is called with the row's fields (lower-cased C2M2 column → value) and its line, and
    returns the record's fields, or the reason the row is unusable.
    """
    roots: list[tuple[Path, ...]] = []  # found once, on the first local file looked at

    def allowed(path: str) -> bool:
        if not roots:
            try:
                roots.append(Settings.from_env().roots_for(manifest))
            except ConfigError:
                roots.append((Path(manifest).resolve().parent,))
        real = Path(os.path.realpath(path))
        return any(real == root or root in real.parents for root in _real(roots[0]))

    folder = Path(os.path.abspath(manifest)).parent

    def convert(fields: dict[str, str], line: int) -> dict[str, str] | str:
        return _convert({key: value.strip() for key, value in fields.items()}, folder, allowed)

    return convert


def _real(roots: tuple[Path, ...]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def _convert(
    values: dict[str, str], folder: Path, allowed: Callable[[str], bool]
) -> dict[str, str] | str:
    """One row as a record, or why it cannot be used."""
    ident = f"{values.get('id_namespace', '')}:{values.get('local_id', '')}"
    uri = _location(values)
    if uri is None:
        return (
            f"C2M2 file {ident}: neither access_url "
            f"({_shown(values.get('access_url', ''))}) nor persistent_id "
            f"({_shown(values.get('persistent_id', ''))}) says where to read it — give an "
            "access_url (https://, gs://, file:// or drs://) or a drs:// or https:// "
            "persistent_id"
        )
    filename = values.get("filename", "")
    local = _local_file(uri, folder, allowed)
    fmt, warning = _format(values, filename, uri, local)
    if fmt is None:
        return f"C2M2 file {ident}: {warning}"
    term = "" if warning else values.get("file_format", "")
    if local is not None and (contradiction := _contradiction(local, fmt, term)):
        return f"C2M2 file {ident}: {contradiction}"
    name = ident + (f" {filename}" if filename else "")
    record = dict(values)
    record.update(
        name=name.replace("/", "%2F").replace("\\", "%5C"),
        uri=uri,
        md5=values.get("md5", ""),
        format=fmt,
        size=values.get("size_in_bytes", ""),
    )
    if warning:
        record[WARNING_KEY] = warning
    return record


def _shown(value: str) -> str:
    if not value:
        return "empty"
    try:
        value = redact(value)
    except ValueError:
        value = value.split("?", 1)[0]
    return repr(value if len(value) <= 60 else value[:57] + "…")


def _location(values: Mapping[str, str]) -> str | None:
    """The access_url when usable, else a drs:// or https:// persistent_id, else None."""
    access = values.get("access_url", "")
    if access and (access.lower().startswith(_ACCESS_SCHEMES) or not _SCHEME.match(access)):
        return access
    persistent = values.get("persistent_id", "")
    if persistent.lower().startswith(_PERSISTENT_SCHEMES):
        return persistent
    return None


def _local_file(uri: str, folder: Path, allowed: Callable[[str], bool]) -> str | None:
    """The regular local file ``uri`` names inside the allowed roots, else None."""
    if _SCHEME.match(uri) and not uri.lower().startswith("file:"):
        return None
    try:
        path = resolve_uri(uri, base=folder)
    except GenoflowError:
        return None  # the manifest reader reports the uri itself
    return path if os.path.isfile(path) and allowed(path) else None


def _format(
    values: Mapping[str, str], filename: str, uri: str, local: str | None
) -> tuple[str | None, str]:
    """(format, warning) from the EDAM term, else by name, else by content; (None, reason)."""
    term = values.get("file_format", "")
    curie = edam_curie(term) if term else None
    if curie in EDAM_FORMATS:
        return EDAM_FORMATS[curie][0], ""
    said = (
        f"file_format {_shown(term)} is not an EDAM term genoflow maps"
        if term
        else "file_format is empty"
    )
    for label in (filename, uri_basename(uri)):
        if fmt := formats.format_from_name(label):
            return fmt, f"{said}; format {fmt} taken from the file name {_shown(label)}"
    if local is not None and (fmt := _format_by_content(local)):
        return fmt, f"{said}; format {fmt} taken from the content of {local}"
    known = ", ".join(f"{curie} ({fmt})" for curie, (fmt, _) in EDAM_FORMATS.items())
    return None, f"{said} and neither its file name nor its content tells — use one of {known}"


def _format_by_content(path: str) -> str | None:
    """The formats a file's first bytes prove by themselves: BAM, bigBed, bigWig."""
    sniffed = formats.sniff(path)
    if sniffed.is_bam:
        return "bam"
    return {"bigbed": "bigBed", "bigwig": "bigWig"}.get(sniffed.container)


def _contradiction(path: str, fmt: str, term: str) -> str | None:
    """Why the content of the local file ``path`` is not ``fmt`` (which the EDAM ``term``
    says, or the file name when ``term`` is empty), or None when it may be."""
    sniffed = formats.sniff(path)
    if sniffed.container == "empty" or sniffed.problem:
        return None  # staging reports an empty or corrupt file
    try:
        formats.detect(path, name=os.path.basename(path), declared=fmt)
    except FormatError as exc:
        said = f"file_format {term} says {fmt}" if term else f"its file name says {fmt}"
        found = exc.message.rsplit(" but ", 1)[-1]
        return f"{said} but {found} ({path}) — correct file_format, or empty it to detect"
    return None
