"""Read manifests (TSV, CSV or JSON) into validated rows.

Invariant: every row of a readable manifest comes out either as a :class:`ManifestRow` whose
name is a safe file name, whose md5 is 32 lower-case hex digits, whose format is canonical and
whose uri is resolved — or as a :class:`RowError` that names ``file:line`` and the reason. One
bad row never stops the others; only a manifest that cannot be parsed at all raises
:class:`~genoflow.core.errors.ManifestError`.

Line numbers: for TSV/CSV, the physical line where the row starts (the header is usually 1;
blank and ``#`` lines count). For JSON, the 1-based index of the object in the list, shown as
``demo.json:#3``.

Parsing the files is :mod:`genoflow.manifests.records`'s job and resolving uris
:mod:`genoflow.manifests.uris`'s; this module validates the rows and checks them against each other.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genoflow.core.errors import GenoflowError, ManifestError
from genoflow.core.formats import FAMILY, FORMATS, Family, format_from_name, normalize_format
from genoflow.core.settings import ConfigError, Settings
from genoflow.manifests.c2m2 import WARNING_KEY
from genoflow.manifests.records import REQUIRED, Record, load_records
from genoflow.manifests.uris import (
    URI_RESOLVERS,
    Resolver,
    resolve_uri,
    unsafe_character,
    uri_basename,
)

if TYPE_CHECKING:
    from genoflow.storage.drs import DrsObject

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

_KNOWN = frozenset((*REQUIRED, "format", "size"))
_MD5 = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT = re.compile(r"-?[0-9]+")


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

    def warnings(self) -> list[str]:
        """``manifest:line: what`` for each kept row that carries a warning (a C2M2 row whose
        format was not given by its EDAM term, for one)."""
        return [
            f"{row.location()}: {row.extra[WARNING_KEY]}"
            for row in self.rows
            if row.extra.get(WARNING_KEY)
        ]

    def sources(self) -> dict[str, list[ManifestRow]]:
        """Group rows by md5 (replicas of one source), in first-seen order."""
        groups: dict[str, list[ManifestRow]] = {}
        for row in self.rows:
            groups.setdefault(row.md5, []).append(row)
        return groups


Md5Lookup = Callable[[str], str | None]


def read_manifest(
    path: str | Path, *, md5_lookup: Md5Lookup | None = None, base: str | None = None
) -> Manifest:
    """Read one manifest; see :func:`read_manifests`."""
    return read_manifests([path], md5_lookup=md5_lookup, base=base)


def manifest_of_records(
    path: Path,
    records: Iterable[Record],
    *,
    md5_lookup: Md5Lookup | None = None,
    base: str | None = None,
) -> Manifest:
    """One manifest from records already parsed from it, validated as :func:`read_manifest`
    validates them (conflicts across its rows included)."""
    rows, errors = validate_records(path, records, md5_lookup=md5_lookup, base=base)
    rows, conflicts = _cross_check(rows)
    errors = sorted([*errors, *conflicts], key=lambda error: error.line)
    return Manifest(paths=[path], rows=rows, errors=errors)


def validate_records(
    path: Path,
    records: Iterable[Record],
    *,
    md5_lookup: Md5Lookup | None = None,
    base: str | None = None,
) -> tuple[list[ManifestRow], list[RowError]]:
    """Each record of the manifest ``path`` as a row or an error (nothing across rows);
    relative uris resolve against ``base``, else the manifest's folder."""
    folder = base or Path(os.path.abspath(path)).parent
    records = list(records)
    drs = _resolve_drs_ids(records)
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    for line, fields in records:
        outcome = validate_record(
            fields, manifest=path, line=line, base=folder, lookup=md5_lookup, drs=drs
        )
        (rows if isinstance(outcome, ManifestRow) else errors).append(outcome)
    return rows, errors


DrsAnswers = Mapping[str, "DrsObject | GenoflowError"]
"""``drs://`` id → the DRS object it resolved to, or the error resolving it ended in."""


def _resolve_drs_ids(records: list[Record]) -> DrsAnswers:
    """Every distinct ``drs://`` id the records name, resolved concurrently
    (``GENOFLOW_DRS_CONCURRENCY`` at a time); an id's failure is kept as its answer."""
    ids = [
        uri
        for _line, fields in records
        if not isinstance(fields, str)
        and (uri := fields.get("uri", "").strip()).lower().startswith("drs://")
    ]
    if not ids:
        return {}
    from genoflow.storage.drs import resolve_objects

    try:
        return resolve_objects(ids)
    except ConfigError as exc:  # every DRS row says so; the other rows still flow
        return dict.fromkeys(ids, exc)


def read_manifests(
    paths: Iterable[str | Path],
    *,
    md5_lookup: Md5Lookup | None = None,
    base: str | None = None,
    unreadable: list[ManifestError] | None = None,
) -> Manifest:
    """Read manifests and validate their rows together.

    A row is dropped (and reported) when a required field (name, uri, md5) is missing, the md5
    (or a ``sha256`` given) is malformed, the format is unknown, the name is not a safe file
    name, the size is not a whole number of bytes, the uri is unsupported, or its ``drs://`` id
    does not resolve (every distinct id of a manifest is asked for once, several at a time:
    ``GENOFLOW_DRS_CONCURRENCY``). Across all the manifests, a name given
    two different md5s drops *every* row with that name (which one is right cannot be told);
    rows whose md5 was already seen with another format are dropped, the first one kept.

    Args:
        paths: the manifests.
        md5_lookup: for ``gs://`` rows whose md5 is left empty, a function returning the
            object's md5 (its ``md5Hash``); without one, the md5 is required on every row.
        base: what relative uris resolve against instead of each manifest's own folder, e.g.
            the ``gs://bucket/prefix`` a local copy of a bucket's manifest was downloaded from.
        unreadable: when given, a manifest that cannot be read or parsed is added to it and left
            out (the others still flow) instead of raising.

    Raises:
        ManifestError: a manifest cannot be read or parsed at all (the first such one), unless
            ``unreadable`` collects them.
    """
    manifests = []
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    for manifest in (Path(path) for path in paths):
        try:
            records = load_records(manifest)
        except ManifestError as exc:
            if unreadable is None:
                raise
            unreadable.append(exc)
            continue
        manifests.append(manifest)
        valid, invalid = validate_records(manifest, records, md5_lookup=md5_lookup, base=base)
        rows.extend(valid)
        errors.extend(invalid)
    rows, conflicts = _cross_check(rows)
    order = {manifest: index for index, manifest in enumerate(manifests)}
    errors = sorted([*errors, *conflicts], key=lambda error: (order[error.manifest], error.line))
    return Manifest(paths=manifests, rows=rows, errors=errors)


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "…")


def _name_problem(name: str) -> str | None:
    if unsafe := unsafe_character(name):
        return (
            f"name {_show(name)} contains {unsafe}, which can make it display as another name "
            "— remove it"
        )
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


def _resolve(uri: str, base: Path | str) -> tuple[str, str | None]:
    try:
        return resolve_uri(uri, base=base), None
    except GenoflowError as exc:
        return "", exc.message


def _lookup_md5(uri: str, lookup: Md5Lookup | None) -> tuple[str, str | None]:
    """The md5 of a ``gs://`` row left empty, from the object's own md5Hash."""
    if lookup is None or not uri.startswith("gs://"):
        return "", None
    try:
        found = lookup(uri)
    except GenoflowError as exc:
        return "", f"md5 left empty and the object's md5Hash could not be read: {exc.message}"
    if not found:
        return "", "md5 left empty but the object has no md5Hash (composite upload): give it"
    return found.lower(), None


def _drs_facts(
    uri: str, md5: str, size: str, answers: DrsAnswers | None
) -> tuple[str, str, str | None]:
    """A ``drs://`` row's md5 and size: the DRS object's (from ``answers``, else asked now)
    fill what the row leaves empty and must equal what it gives. Returns (md5, size, problem)."""
    found = (answers or {}).get(uri)
    if found is None:
        from genoflow.storage.drs import drs_object

        try:
            found = drs_object(uri)
        except GenoflowError as exc:
            found = exc
    if isinstance(found, GenoflowError):
        return md5, size, str(found)
    fix = "check which is right, then fix the manifest (or leave the column empty)"
    if md5 and found.md5 and _MD5.fullmatch(md5) and md5 != found.md5:
        problem = f"md5 {md5} disagrees with the DRS object's md5 checksum {found.md5}"
        return md5, size, f"{problem} ({uri}) — {fix}"
    if not md5 and not found.md5:
        return md5, size, f"md5 left empty but the DRS object {uri} lists no md5 checksum: give it"
    if size and _INT.fullmatch(size) and int(size) != found.size:
        problem = f"size {size} disagrees with the DRS object's size {found.size}"
        return md5, size, f"{problem} ({uri}) — {fix}"
    return md5 or found.md5 or "", size or str(found.size), None


def _sha256_problem(values: dict[str, str]) -> str | None:
    """Lower-case a row's ``sha256`` (staging verifies it); why it is malformed, if it is."""
    sha256 = values.get("sha256", "").lower()
    if not sha256:
        return None
    values["sha256"] = sha256
    if _SHA256.fullmatch(sha256):
        return None
    return f"malformed sha256 {_show(sha256)} (need 64 hex digits, or leave it empty)"


def validate_record(
    fields: dict[str, str] | str,
    *,
    manifest: Path,
    line: int,
    base: Path | str,
    lookup: Md5Lookup | None = None,
    drs: DrsAnswers | None = None,
) -> ManifestRow | RowError:
    """One manifest record (its fields, or the reason it could not be split) as a row or an
    error at ``manifest:line``; ``base`` resolves relative uris, and a ``drs://`` id is looked
    up in ``drs`` (resolved now when it is not there)."""
    if isinstance(fields, str):
        return RowError(manifest, line, fields)
    values = {column: value.strip() for column, value in fields.items()}
    name, uri, md5 = values.get("name", ""), values.get("uri", ""), values.get("md5", "").lower()
    resolved, uri_problem = _resolve(uri, base) if uri else ("", None)
    drs_problem = None  # when set, the md5 is not "missing": the DRS could not be asked
    if resolved.startswith("drs://") and not uri_problem:
        md5, values["size"], drs_problem = _drs_facts(resolved, md5, values.get("size", ""), drs)
    elif not md5 and resolved and not uri_problem:
        md5, uri_problem = _lookup_md5(resolved, lookup)
    # With neither name nor uri, "missing required fields" already says enough.
    fmt, format_problem = (
        _format(values.get("format", ""), name, uri) if name or uri else ("", None)
    )
    size, size_problem = _size(values.get("size", ""))
    problems = (
        _missing(name, uri, md5 or ("?" if drs_problem else "")),
        _name_problem(name) if name else None,
        f"malformed md5 {_show(values['md5'])} (need 32 hex digits)"
        if md5 and not _MD5.fullmatch(md5)
        else None,
        _sha256_problem(values),
        uri_problem or drs_problem,
        format_problem,
        size_problem,
    )
    if not fmt or any(problems):
        return RowError(manifest, line, "; ".join(problem for problem in problems if problem))
    extra = {column: value for column, value in values.items() if column not in _KNOWN}
    return ManifestRow(manifest, line, name, resolved, md5, fmt, FAMILY[fmt], size, extra)


def conflicts(keys: Iterable[tuple[str, str, str, int | None]]) -> bool:
    """Whether :func:`_cross_check` would drop any of rows with these (name, md5, format,
    size): a name with two md5s, or an md5 with two formats or two declared sizes."""
    md5_of: dict[str, str] = {}
    format_of: dict[str, str] = {}
    size_of: dict[str, int] = {}
    for name, md5, fmt, size in keys:
        if md5_of.setdefault(name, md5) != md5 or format_of.setdefault(md5, fmt) != fmt:
            return True
        if size is not None and size_of.setdefault(md5, size) != size:
            return True
    return False


def _cross_check(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[RowError]]:
    """Drop every row of a name with two md5s, then the rows of an md5 that disagree with the
    others on ``format`` or ``size`` (:func:`_disagreeing`)."""
    md5_of: dict[str, str] = {}
    by_name: dict[str, list[ManifestRow]] = {}  # only names given two md5s
    for row in rows:
        if md5_of.setdefault(row.name, row.md5) != row.md5:
            by_name[row.name] = []
    by_md5: dict[str, list[ManifestRow]] = {}
    for row in rows:
        if row.name in by_name:
            by_name[row.name].append(row)
        else:
            by_md5.setdefault(row.md5, []).append(row)
    dropped: dict[ManifestRow, str] = {}
    for name, same_name in by_name.items():
        listing = _listing(same_name, lambda other: other.md5)
        reason = f"name {_show(name)} has conflicting md5s ({listing}); all dropped"
        dropped.update((row, reason) for row in same_name)
    for group in by_md5.values():
        if len(group) > 1:
            dropped.update(_disagreeing(group))
    kept = [row for row in rows if row not in dropped]
    errors = [RowError(row.manifest, row.line, reason) for row, reason in dropped.items()]
    return kept, errors


def _places(rows: list[ManifestRow]) -> str:
    shown = ", ".join(row.location() for row in rows[:4])
    return shown + (f" and {len(rows) - 4} more" if len(rows) > 4 else "")


def _listing(rows: list[ManifestRow], value: Callable[[ManifestRow], object]) -> str:
    shown = ", ".join(f"{value(row)} at {row.location()}" for row in rows[:4])
    return shown + (f" and {len(rows) - 4} more" if len(rows) > 4 else "")


Evidence = dict[object, dict[ManifestRow, str]]
"""value -> the rows whose files show it, and how: ``{11: {row: "the file /data/a.bed has"}}``."""


def _disagreeing(group: list[ManifestRow]) -> dict[ManifestRow, str]:
    """The rows of one md5 to drop, each with its own reason.

    One rule for ``format`` and ``size``: when the rows declare different values, the value
    the files show without being opened wins (a local replica's size from ``stat``; the format
    the rows' own file names say), else the value most rows declare; every row declaring
    another value is dropped. When nothing settles it (a tie), every row declaring a value is
    dropped: which one is right cannot be told. Rows declaring no size never conflict.
    """
    reasons: dict[ManifestRow, list[str]] = {}
    columns: tuple[tuple[str, Callable[[ManifestRow], object], Callable[..., Evidence]], ...] = (
        ("format", lambda row: row.format, _named_formats),
        ("size", lambda row: row.size, _stat_sizes),
    )
    for column, value, evidence in columns:
        declared = [row for row in group if value(row) is not None]
        if len({value(row) for row in declared}) < 2:
            continue
        shown = evidence(group)
        winner, basis = _settle([value(row) for row in declared], shown)
        for row in declared:
            if value(row) == winner:
                continue
            if winner in shown:  # the row's own file, when it is one that shows the winner
                basis = shown[winner].get(row) or next(iter(shown[winner].values()))
            others = [other for other in declared if value(other) != value(row)]
            if winner is None:
                why = f"other rows say {_listing(others, value)}; which is right cannot be told"
                why += ", so every row of this md5 declaring one is dropped"
            else:
                unit = " bytes" if column == "size" else ""
                agree = [other for other in declared if value(other) == winner]
                where = "" if basis.startswith("the file") else " at " + _places(agree)
                why = f"{basis} {winner}{unit}{where} (the rows that agree are kept)"
            problem = f"md5 {row.md5} has {column} {value(row)} here, but {why}"
            reasons.setdefault(row, []).append(problem)
    return {row: "; ".join(found) for row, found in reasons.items()}


def _settle(values: list[object], shown: Evidence) -> tuple[object | None, str]:
    """The winning value among ``values`` and why, or (None, "") for a tie."""
    candidates = [value for value in dict.fromkeys(values) if value in shown]
    if len(candidates) == 1:
        return candidates[0], "the files show"
    counts = sorted(((values.count(value), value) for value in set(values)), reverse=True)
    if counts[0][0] > counts[1][0]:
        return counts[0][1], f"{counts[0][0]} of the {len(values)} rows declare"
    return None, ""


def _stat_sizes(group: list[ManifestRow]) -> Evidence:
    """Sizes of the group's local replicas, from ``stat`` (never opened: a FIFO cannot block)."""
    shown: Evidence = {}
    for row in group:
        if not row.uri.startswith("/") or not _inside_allowed_roots(row):
            continue
        try:
            info = os.stat(row.uri)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(info.st_mode):
            shown.setdefault(info.st_size, {})[row] = f"the file {row.uri} has"
    return shown


def _inside_allowed_roots(row: ManifestRow) -> bool:
    """Whether the row's local file resolves inside the roots staging may read it from
    (``GENOFLOW_ALLOWED_ROOTS``, else the manifest's folder): a file outside them is never
    looked at, so no message can tell its size."""
    try:
        roots = Settings.from_env().roots_for(row.manifest)
    except ConfigError:
        roots = (Path(row.manifest).resolve().parent,)
    real = Path(os.path.realpath(row.uri))
    return any(real == root or root in real.parents for root in map(_real, roots))


def _real(root: Path) -> Path:
    return Path(os.path.realpath(root))


def _named_formats(group: list[ManifestRow]) -> Evidence:
    """Formats the group's file names (name column, then uri) say by their suffix."""
    shown: Evidence = {}
    for row in group:
        for label in (row.name, uri_basename(row.uri)):
            fmt = format_from_name(label)
            if fmt is not None:
                shown.setdefault(fmt, {}).setdefault(row, f"the file name {_show(label)} says")
    return shown
