"""What each asset of each family does, as plain functions over the cache.

Every ``build_*`` function returns the published :class:`Artifact` on a cache hit (a metadata
read, nothing re-sorted) or a :class:`Built` draft that :func:`publish` makes visible. A failure
discards the draft, so nothing half-written is ever published. No Dagster here: the asset
bodies call these functions and the IO manager calls :func:`publish`.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from genoflow.core import formats
from genoflow.core.checksums import md5_file
from genoflow.core.settings import Settings
from genoflow.core.errors import GenoflowError, SourceError, StorageError, redact
from genoflow.processors import alignments
from genoflow.processors import intervals
from genoflow.processors.base import Result, SortCheck, tool_versions
from genoflow.storage import staging
from genoflow.storage.cache import Artifact, Draft, FileEntry, content_checksum
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.registry import SourceRow

SOURCE_VERSION = "1"
CHAINS: dict[str, tuple[str, ...]] = {
    "alignments": ("source", "sorted", "index"),
    "intervals": ("source", "sorted", "index"),
    "passthrough": ("source",),
}
_PROCESSORS = {"alignments": alignments, "intervals": intervals}
# The asset check of each asset (``genoflow/defs/assets/checks.py``), named ``asset:check`` in outcomes.
CHECKS: dict[str, str] = {
    "source": "md5_and_size_match_manifest",
    "sorted": "records_preserved_and_ordered",
    "index": "answers_region_queries",
}


class Store(Protocol):
    """Where artifacts are built: the local :class:`Cache`, or a replica-aware ``Node``."""

    def begin(self, key: ArtifactKey) -> Artifact | Draft: ...
    def discard(self, draft: Draft) -> None: ...
    def publish(self, draft: Draft, **kwargs: Any) -> Artifact: ...
    def workdir(self, label: str) -> AbstractContextManager[Path]: ...


def version_of(family: str, asset: str) -> str:
    """The processor version (Dagster ``code_version``) of one asset of one family."""
    if asset == "source":
        return SOURCE_VERSION
    module = _PROCESSORS[family]
    return module.SORT_VERSION if asset == "sorted" else module.INDEX_VERSION


def job_name(family: str) -> str:
    """The Dagster job that builds a family's whole chain for one md5."""
    return f"{family}_chain"


def chain_version(family: str) -> str:
    """The code versions of a family's chain, e.g. ``source1.sorted1.index1``."""
    return ".".join(f"{asset}{version_of(family, asset)}" for asset in CHAINS[family])


def key_for(family: str, md5: str, asset: str) -> ArtifactKey:
    return ArtifactKey(family, md5, asset, version_of(family, asset))


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
        folder = self.draft.dir
        return [
            FileEntry(name, (folder / name).stat().st_size, md5_file(folder / name))
            for name in self.details["files"]
        ]

    @property
    def checksum(self) -> str:
        """The content checksum the artifact will have once published (its data version)."""
        return content_checksum(self.entries)


def publish(cache: Store, built: Built) -> Artifact:
    """Publish a built draft atomically (or adopt the copy another builder published first)."""
    return cache.publish(
        built.draft,
        processor=built.processor,
        inputs=built.inputs,
        details=built.details,
        tools=tool_versions(),
        entries=built.entries,
    )


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
    size = next((row.size for row in rows if row.size is not None), None)

    def make(draft: Draft) -> tuple[str, dict[str, Any]]:
        staged, uri = staging.stage(
            replica_order(full_uri(row) for row in rows),
            draft.dir / "staged",
            md5=md5,
            size=size,
            name=first.name,
            roots=roots,
        )
        fmt = formats.detect(staged, name=first.name, declared=first.format)
        sniffed = formats.sniff(staged)
        if sniffed.container == "bgzf":
            formats.verify_bgzf_complete(staged, name=first.name, stage="stage")
        final = draft.dir / _staged_name(fmt, sniffed.container)
        staged.rename(final)
        details = {
            "files": [final.name],
            "format": fmt,
            "family": first.family,
            "container": sniffed.container,
            "names": sorted({row.name for row in rows}),
            "manifest_rows": [f"{row.manifest}:{row.line}" for row in rows],
            "staged_from": redact(uri),
            "size": final.stat().st_size,
        }
        return "genoflow.storage.staging.stage", details

    return _build(cache, key, make, stage="stage", name=first.name)


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
    """Distinct source URIs, cheapest first: local files, then gs://, then http(s)://."""
    rank = {"gs": 1, "http": 2, "https": 2}
    distinct = list(dict.fromkeys(uris))
    return sorted(
        distinct, key=lambda uri: rank.get(uri.split("://", 1)[0], 0) if "://" in uri else 0
    )


def _staged_name(fmt: str, container: str) -> str:
    suffix = formats.FORMAT_SUFFIX[fmt]
    if fmt != "bam" and container in ("gzip", "bgzf"):
        suffix += ".gz"
    return f"source.{suffix}"


def build_sorted(cache: Store, source: Artifact, settings: Settings) -> Artifact | Built:
    """Sort (and for alignments convert to BAM) and BGZF-compress the staged source."""
    family, fmt, name = _facts(source)
    key = key_for(family, source.key.md5, "sorted")

    def make(draft: Draft) -> tuple[str, dict[str, Any]]:
        with cache.workdir(f"{source.key.md5}-sorted") as work:
            if family == "alignments":
                result = alignments.sort_alignments(
                    source.main,
                    draft.dir,
                    work_dir=work,
                    memory=settings.sort_memory,
                    threads=settings.threads,
                    name=name,
                    max_expansion=settings.max_expansion,
                )
                processor = "genoflow.processors.alignments.sort_alignments"
            else:
                result = intervals.sort_intervals(
                    source.main,
                    draft.dir,
                    fmt=fmt,
                    work_dir=work,
                    memory=settings.sort_memory,
                    threads=settings.threads,
                    name=name,
                    max_expansion=settings.max_expansion,
                )
                processor = "genoflow.processors.intervals.sort_intervals"
        return processor, _details(result, source)

    return _build(cache, key, make, source, stage="sort", name=name)


def build_index(cache: Store, sorted_: Artifact, settings: Settings) -> Artifact | Built:
    """Index the sorted artifact; the index folder holds the data file beside its index."""
    family, fmt, name = _facts(sorted_)
    key = key_for(family, sorted_.key.md5, "index")

    def make(draft: Draft) -> tuple[str, dict[str, Any]]:
        if family == "alignments":
            result = alignments.index_alignments(
                sorted_.main, draft.dir, threads=settings.threads, name=name
            )
            processor = "genoflow.processors.alignments.index_alignments"
        else:
            result = intervals.index_intervals(sorted_.main, draft.dir, fmt=fmt, name=name)
            processor = "genoflow.processors.intervals.index_intervals"
        return processor, _details(result, sorted_)

    return _build(cache, key, make, sorted_, stage="index", name=name)


def _facts(artifact: Artifact) -> tuple[str, str, str]:
    return artifact.key.family, artifact.marker.details["format"], artifact.marker.names[0]


def _details(result: Result, upstream: Artifact) -> dict[str, Any]:
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
    if family == "alignments":
        return alignments.check_sorted(sorted_.main, name=name)
    return intervals.check_sorted(sorted_.main, fmt=fmt, name=name)


def query_regions(index: Artifact) -> dict[str, int]:
    """Run one region query per contig through an index artifact; contig → records."""
    family, fmt, name = _facts(index)
    if family == "alignments":
        return alignments.query_index(index.path, name=name)
    return intervals.query_index(index.path, fmt=fmt, name=name)
