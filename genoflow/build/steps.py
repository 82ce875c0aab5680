"""What each asset of each family does, as plain functions over the cache.

Every ``build_*`` function returns the published :class:`Artifact` on a cache hit (a metadata
read, nothing re-sorted) or a :class:`Built` draft that :func:`publish` makes visible. A failure
discards the draft, so nothing half-written is ever published. What differs between families is
asked of the family object (:mod:`genoflow.build.families`), never branched on here. No Dagster
here: the asset bodies call these functions and the IO manager calls :func:`publish`.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from genoflow.build import observed, sources
from genoflow.build.families import (
    CHAINS,
    CHECKS,
    FAMILIES,
    Family,
    chain_version,
    family_named,
    job_name,
    key_for,
    version_of,
)
from genoflow.core.checksums import md5_file
from genoflow.core.errors import StorageError
from genoflow.core.settings import Settings
from genoflow.processors.base import Result, SortCheck, tool_versions
from genoflow.storage.cache import Artifact, Draft, FileEntry, content_checksum
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.registry import SourceRow

# The chain facts live in genoflow.build.families; they stay importable from here.
__all__ = [
    "CHAINS",
    "CHECKS",
    "FAMILIES",
    "Built",
    "Proof",
    "Store",
    "build_index",
    "build_sorted",
    "build_source",
    "chain_version",
    "check_order",
    "job_name",
    "key_for",
    "prove_index",
    "prove_sorted",
    "prove_source",
    "publish",
    "query_regions",
    "version_of",
]


class Store(Protocol):
    """Where artifacts are built: the local :class:`Cache`, or a replica-aware ``Node``."""

    def begin(self, key: ArtifactKey) -> Artifact | Draft: ...
    def discard(self, draft: Draft) -> None: ...
    def publish(self, draft: Draft, **kwargs: Any) -> Artifact: ...
    def workdir(self, label: str) -> AbstractContextManager[Path]: ...


@dataclass
class Built:
    """A freshly built, not yet published artifact."""

    draft: Draft
    processor: str
    details: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @functools.cached_property
    def entries(self) -> list[FileEntry]:
        """Sizes and md5s of the built files, hashed once for the data version and the marker."""
        folder, known = self.draft.dir, self.details.get("observed", {}).get("md5", {})
        return [
            FileEntry(
                name, (folder / name).stat().st_size, known.get(name) or md5_file(folder / name)
            )
            for name in self.details["files"]
        ]

    @property
    def checksum(self) -> str:
        """The content checksum the artifact will have once published (its data version)."""
        return content_checksum(self.entries)


def publish(cache: Store, built: Built) -> Artifact:
    """Publish a built draft atomically (or adopt the copy another builder published first).

    The artifact is sealed (:func:`observed.seal`) when the copy published is this build's own,
    so that its checks may rest on what the build observed while it stays unchanged.
    """
    artifact = cache.publish(
        built.draft,
        processor=built.processor,
        inputs=built.inputs,
        details=built.details,
        tools=tool_versions(),
        entries=built.entries,
    )
    ours = artifact.marker.created_by.get("pid") == os.getpid()
    if ours and artifact.checksum == built.checksum:
        observed.seal(artifact)
    return artifact


_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _build(
    cache: Store,
    key: ArtifactKey,
    make: Callable[[Draft], tuple[str, dict[str, Any]]],
    upstream: Artifact | None = None,
    *,
    stage: str,
    name: str,
) -> Artifact | Built:
    """The published artifact of ``key``, or a draft that ``make`` filled (never half-written).

    ``make`` writes into the draft and names its processor and details; any failure discards
    the draft, and a full disk becomes a :class:`StorageError` naming the stage and the file.
    """
    found = cache.begin(key)
    if isinstance(found, Artifact):
        return found
    started = time.perf_counter()
    try:
        processor, details = make(found)
    except OSError as exc:
        cache.discard(found)
        if exc.errno not in _DISK_FULL:
            raise
        raise StorageError(
            f"ran out of disk space while writing ({os.strerror(exc.errno)})",
            stage=stage,
            file=name,
            hint="free space under GENOFLOW_HOME (or point it at a larger disk) and run again",
        ) from None
    except BaseException:
        cache.discard(found)
        raise
    inputs = []
    if upstream is not None:
        inputs = [{"asset": upstream.key.asset_path, "checksum": upstream.checksum}]
    return Built(found, processor, details, inputs, time.perf_counter() - started)


def build_source(
    cache: Store, rows: Sequence[SourceRow], *, md5: str, settings: Settings | None = None
) -> Artifact | Built:
    """Stage the first replica that verifies, confirm its format by content, keep it.

    A local source is read only from inside the allowed roots (``GENOFLOW_ALLOWED_ROOTS``, by
    default the folder of the manifest that lists it), symlinks resolved.
    """
    first = rows[0]
    settings = settings or Settings.from_env()
    roots: dict[str, tuple[Path, ...]] = {}
    for row in rows:
        roots.setdefault(row.uri, settings.roots_for(row.manifest))
    key = key_for(first.family, md5, "source")

    def make(draft: Draft) -> tuple[str, dict[str, Any]]:
        return sources.stage_rows(rows, draft.dir, md5=md5, roots=roots)

    return _build(cache, key, make, stage="stage", name=first.name)


def build_sorted(cache: Store, source: Artifact, settings: Settings) -> Artifact | Built:
    """Sort (and for alignments convert to BAM) and BGZF-compress the staged source."""
    family, fmt, name = _facts(source)
    key = key_for(family.name, source.key.md5, "sorted")

    def make(draft: Draft) -> tuple[str, dict[str, Any]]:
        with cache.workdir(f"{source.key.md5}-sorted") as work:
            result = family.sort(
                source.main, draft.dir, fmt=fmt, work_dir=work, settings=settings, name=name
            )
        return family.processors["sorted"], _details(result, source)

    return _build(cache, key, make, source, stage="sort", name=name)


def build_index(cache: Store, sorted_: Artifact, settings: Settings) -> Artifact | Built:
    """Index the sorted artifact; the index folder holds the data file beside its index."""
    family, fmt, name = _facts(sorted_)
    key = key_for(family.name, sorted_.key.md5, "index")

    def make(draft: Draft) -> tuple[str, dict[str, Any]]:
        result = family.index(sorted_.main, draft.dir, fmt=fmt, settings=settings, name=name)
        details = _details(result, sorted_)
        details["observed"] = {"upstream_records": sorted_.marker.records_out}
        return family.processors["index"], details

    return _build(cache, key, make, sorted_, stage="index", name=name)


def _facts(artifact: Artifact) -> tuple[Family, str, str]:
    """The artifact's family object, its format and the first name it is known by."""
    family = family_named(artifact.key.family)
    return family, artifact.marker.details["format"], artifact.marker.names[0]


def _details(result: Result, upstream: Artifact) -> dict[str, Any]:
    """A built artifact's marker details: its files and counts, the rest inherited upstream."""
    inherited = upstream.marker
    return {
        "files": [Path(path).name for path in result.files],
        "format": inherited.details["format"],
        "family": inherited.details["family"],
        "names": inherited.details["names"],
        "records_in": result.records_in,
        "records_out": result.records_out,
        **result.metadata,
    }


def check_order(sorted_: Artifact) -> SortCheck:
    """Re-read a sorted artifact and prove its order and record count."""
    family, fmt, name = _facts(sorted_)
    return family.check_order(sorted_.main, fmt=fmt, name=name)


def query_regions(index: Artifact) -> dict[str, int]:
    """Run one region query per contig through an index artifact; contig → records."""
    family, fmt, name = _facts(index)
    return family.query_regions(index.path, fmt=fmt, name=name)


@dataclass(frozen=True)
class Proof:
    """What a check found: ``problem`` (empty when it holds), what it measured, and how.

    ``how`` is ``observed`` when the proof rests on what this process's build saw of a sealed
    artifact plus cheap probes, ``re-read`` when the artifact was read again in full.
    """

    problem: str
    measured: dict[str, Any]
    how: str


def prove_source(source: Artifact, rows: Sequence[SourceRow]) -> Proof:
    """The staged bytes hash to the partition's md5 and have the size every row declares.

    Sealed: the md5 staging computed over the bytes it wrote, and the size from ``stat``.
    Otherwise the staged copy is hashed again in full.
    """
    size = source.main.stat().st_size
    seen = source.marker.details.get("observed", {})
    if observed.sealed(source) and source.main.name in seen.get("md5", {}):
        actual, how = seen["md5"][source.main.name], "observed"
        if seen.get("size") != size:
            return Proof(f"the build wrote {seen.get('size')} bytes, {size} are there", {}, how)
    else:
        actual, how = md5_file(source.main), "re-read"
    wrong = [f"{row.manifest}:{row.line}" for row in rows if row.size not in (None, size)]
    problems = []
    if actual != source.key.md5:
        problems.append(f"the staged copy hashes to {actual}, not to the source's md5")
    if wrong:
        problems.append(f"rows declare another size than {size} bytes: {', '.join(wrong)}")
    measured = {
        "md5": actual,
        "expected_md5": source.key.md5,
        "size_bytes": size,
        "declared_sizes": sorted({row.size for row in rows if row.size is not None}),
        "rows_with_another_size": wrong,
    }
    return Proof("; ".join(problems), measured, how)


def prove_sorted(sorted_: Artifact) -> Proof:
    """Every input record is in the output, in sorted order.

    Sealed: the index the build wrote by reading the whole output (htslib refuses decreasing
    starts and split contig blocks) holds as many records as the build read from the input,
    and its contigs come in the expected order, each answering a region query. Otherwise the
    output is re-read record by record.
    """
    family, fmt, name = _facts(sorted_)
    expected = sorted_.marker.records_in
    if observed.sealed(sorted_):
        counts = family.indexed_counts(sorted_.main, fmt=fmt, name=name)
        found = sum(records for _, records in counts)
        problem = family.probe(sorted_.main, [c for c, n in counts if n], fmt=fmt, name=name)
        if not problem and found != expected:
            problem = f"the index holds {found} records, the build read {expected}"
        measured = {"records": found, "records_in": expected, "ordered": not problem}
        return Proof(problem or "", measured, "observed")
    result = check_order(sorted_)
    problem = ""
    if not result.ordered:
        problem = result.problem or "not in sorted order"
    elif result.records != expected:
        problem = f"re-reading found {result.records} records, the build wrote {expected}"
    measured = {"records": result.records, "records_in": expected, "ordered": result.ordered}
    return Proof(problem, measured, "re-read")


def prove_index(index: Artifact) -> Proof:
    """The index answers a region query per contig and holds every record.

    Sealed: the index's per-contig counts sum to the records written and one region query per
    contig with records reads its first record (one BGZF block). Otherwise every contig is
    queried in full and its records counted.
    """
    family, fmt, name = _facts(index)
    expected = index.marker.records_out
    if observed.sealed(index):
        counts = dict(family.indexed_counts(index.main, fmt=fmt, name=name))
        problem = family.probe(index.main, [c for c, n in counts.items() if n], fmt=fmt, name=name)
        how = "observed"
    else:
        counts, problem, how = query_regions(index), None, "re-read"
    found = sum(counts.values())
    upstream = index.marker.details.get("observed", {}).get("upstream_records", expected)
    if not problem and found != expected:
        problem = f"region queries found {found} of {expected} records"
    elif not problem and found != upstream:
        problem = f"region queries found {found} records, the sorted input holds {upstream}"
    measured = {
        "records": expected,
        "records_found": found,
        "contigs_queried": len(counts),
        "per_contig": counts,
    }
    return Proof(problem or "", measured, how)
