"""What staging a source means, the same for every family: pick the cheapest replica, verify its
md5 and size (and the sha256 its rows declare, if any), confirm its format by content, and name
the kept copy after its format.

Invariants: a signed URL's token is read back from its manifest only while staging and never
written anywhere (the details record ``staged_from`` redacted); a BGZF source is kept only when
its end-of-file block is present; the staged copy is renamed into the draft, never copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from genoflow.core import formats
from genoflow.core.errors import ChecksumError, GenoflowError, SourceError, redact
from genoflow.storage import staging
from genoflow.storage.registry import SourceRow

STAGE_PROCESSOR = "genoflow.storage.staging.stage"


def stage_rows(
    rows: Sequence[SourceRow],
    folder: Path,
    *,
    md5: str,
    roots: Mapping[str, tuple[Path, ...]],
) -> tuple[str, dict[str, Any]]:
    """Stage the first replica of ``rows`` that verifies into ``folder``.

    Args:
        rows: every manifest row naming this md5 (one file, possibly several replicas).
        folder: the draft folder the staged copy is kept in, as ``source.SUFFIX``.
        md5: the md5 all rows declare.
        roots: for each row's URI, the folders a local source may be read from.

    Returns:
        The processor name recorded in the marker, and the marker's details.
    """
    first = rows[0]
    size = next((row.size for row in rows if row.size is not None), None)
    sha256 = declared_sha256(rows, md5=md5)
    staged, uri = staging.stage(
        replica_order(full_uri(row) for row in rows),
        folder / "staged",
        md5=md5,
        size=size,
        name=first.name,
        roots=roots,
        sha256=sha256,
    )
    fmt = formats.detect(staged, name=first.name, declared=first.format)
    sniffed = formats.sniff(staged)
    if sniffed.container == "bgzf":
        formats.verify_bgzf_complete(staged, name=first.name, stage="stage")
    final = folder / _staged_name(fmt, sniffed.container)
    staged.rename(final)
    details = _details(rows, final, fmt=fmt, container=sniffed.container, uri=uri)
    # staging.stage hashed the very bytes it wrote and refused them unless they hash to md5.
    details["observed"] = {"md5": {final.name: md5}, "size": details["size"]}
    if sha256 is not None:  # the staged file's: verified on the bytes written, in the same pass
        details["sha256"] = sha256
    return STAGE_PROCESSOR, details


def declared_sha256(rows: Sequence[SourceRow], *, md5: str) -> str | None:
    """The sha256 the rows declare (a ``sha256`` column, C2M2's or a plain manifest's), if any.

    Raises:
        ChecksumError: (stage ``stage``) rows of this md5 declare different sha256s, so the
            bytes cannot match them all; nothing is read.
    """
    declared: dict[str, list[str]] = {}
    for row in rows:
        value = str(row.extra.get("sha256") or "").strip().lower()
        if value:
            declared.setdefault(value, []).append(f"{row.manifest}:{row.line}")
    if len(declared) > 1:
        listing = "; ".join(f"{value} at {', '.join(where)}" for value, where in declared.items())
        raise ChecksumError(
            f"the rows of md5 {md5} declare different sha256s ({listing}); nothing was read",
            file=rows[0].name,
            hint="keep the sha256 that is right (or empty the column) in every row of this "
            "file, and run again",
        )
    return next(iter(declared), None)


def _details(
    rows: Sequence[SourceRow], final: Path, *, fmt: str, container: str, uri: str
) -> dict[str, Any]:
    """The source marker's details; the URI it was staged from is recorded redacted."""
    return {
        "files": [final.name],
        "format": fmt,
        "family": rows[0].family,
        "container": container,
        "names": sorted({row.name for row in rows}),
        "manifest_rows": [f"{row.manifest}:{row.line}" for row in rows],
        "staged_from": redact(uri),
        "size": final.stat().st_size,
    }


def full_uri(row: SourceRow) -> str:
    """A row's URI with its token: the registry keeps only ``https://host/path?…``.

    The token lives in the manifest alone, so it is read back from the manifest line the row
    was registered from.

    Raises:
        SourceError: the manifest no longer lists that row.
    """
    if not row.uri.endswith("?…"):
        return row.uri
    from genoflow.manifests.reading import read_manifest

    try:
        rows = read_manifest(row.manifest).rows
    except GenoflowError as exc:
        raise SourceError(
            f"its signed URL is kept only in {row.manifest}, which cannot be read: {exc.message}",
            file=row.name,
            hint="restore the manifest, or run it again with a fresh URL",
        ) from None
    for candidate in rows:
        same = (candidate.line, candidate.name, candidate.md5) == (row.line, row.name, row.md5)
        if same and redact(candidate.uri) == row.uri:
            return candidate.uri
    raise SourceError(
        f"its signed URL is kept only in {row.manifest}, which no longer lists it at line "
        f"{row.line}",
        file=row.name,
        hint="run the manifest that lists it again",
    )


def replica_order(uris: Iterable[str]) -> list[str]:
    """Distinct source URIs, cheapest first: local files, then gs://, then http(s)://, then
    drs:// (one more request to resolve)."""
    rank = {"gs": 1, "http": 2, "https": 2, "drs": 3}
    distinct = list(dict.fromkeys(uris))
    return sorted(
        distinct, key=lambda uri: rank.get(uri.split("://", 1)[0], 0) if "://" in uri else 0
    )


def _staged_name(fmt: str, container: str) -> str:
    suffix = formats.FORMAT_SUFFIX[fmt]
    if fmt != "bam" and container in ("gzip", "bgzf"):
        suffix += ".gz"
    return f"source.{suffix}"
