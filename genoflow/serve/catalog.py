"""What the service can serve: registered sources, found by md5 or by name, and their artifacts.

Invariant: a request's identifier is only ever compared with registry values (an md5, or a
manifest name); every path served comes from the cache's own layout and the artifact's
``genoflow.json``, never from the request. An artifact is served only when the cache finds it
whole (present, and every file of its marker at its recorded size).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genoflow.build.steps import CHAINS, key_for
from genoflow.core.errors import GenoflowError
from genoflow.storage.cache import Artifact, Cache
from genoflow.storage.registry import Registry

MD5 = re.compile(r"[0-9a-f]{32}")
MEMO_SIZE = 4096


class UnknownSource(GenoflowError):
    """No registered source has that identifier."""

    default_stage = "serve"


class AmbiguousName(GenoflowError):
    """Several source md5s carry that manifest name; the caller must pick one by md5."""

    default_stage = "serve"

    def __init__(self, name: str, md5s: list[str]) -> None:
        super().__init__(
            f"{len(md5s)} sources are named so: {', '.join(md5s)}",
            file=name,
            hint="ask for one of them by its md5",
        )
        self.md5s = md5s


@dataclass(frozen=True)
class Source:
    """One registered source md5.

    Attributes:
        md5: the source file's md5 (the partition key).
        family: ``alignments``, ``intervals`` or ``passthrough``.
        format: the format its manifest rows and content agree on (``bam``, ``vcf``…).
        names: every manifest name of that md5, sorted.
    """

    md5: str
    family: str
    format: str
    names: tuple[str, ...]

    @property
    def final_asset(self) -> str:
        """The asset a viewer reads: ``index`` (data beside its index), or ``source``."""
        return CHAINS[self.family][-1]


@dataclass(frozen=True)
class Files:
    """The files a viewer reads for one source, all inside one published artifact folder.

    Attributes:
        artifact: the published artifact (its marker holds each file's size and md5).
        data: the visualization-ready file (sorted BAM, sorted ``.gz``, or the staged source).
        index: the ``.bai``/``.csi``/``.tbi`` beside it, or None for a format with no index.
    """

    artifact: Artifact
    data: Path
    index: Path | None

    def md5_of(self, path: Path) -> str:
        """The md5 ``genoflow.json`` records for one of the artifact's files (a strong ETag)."""
        return next(entry.md5 for entry in self.artifact.entries if entry.name == path.name)


class Catalog:
    """Registered sources and their published artifacts, as the service sees them.

    Hits are remembered for ``memo_seconds`` (a range read then costs no registry query and no
    marker read); misses never are, so an artifact is served as soon as it is published.

    Args:
        registry: the source registry (``genoflow run``'s and the UI's).
        cache: this node's content-addressed cache.
        memo_seconds: how long a resolved identifier and a found artifact are remembered.
    """

    def __init__(self, registry: Registry, cache: Cache, *, memo_seconds: float = 10.0) -> None:
        self.registry = registry
        self.cache = cache
        self.memo_seconds = memo_seconds
        self._sources: dict[str, tuple[float, Source]] = {}
        self._files: dict[str, tuple[float, Files]] = {}

    def resolve(self, ident: str) -> Source:
        """The source an identifier names: an md5, or a manifest name only one md5 has.

        Raises:
            UnknownSource: nothing registered answers to it.
            AmbiguousName: several md5s carry that name.
        """
        remembered = self._sources.get(ident)
        if remembered is not None and remembered[0] > time.monotonic():
            return remembered[1]
        rows = self.registry.rows(ident) if MD5.fullmatch(ident) else []
        if not rows:
            rows = self.registry.rows_named(ident)  # an indexed lookup, never a scan
        md5s = sorted({row.md5 for row in rows})
        if not md5s:
            raise UnknownSource("no registered source has this md5 or name", file=ident)
        if len(md5s) > 1:
            raise AmbiguousName(ident, md5s)
        if ident != md5s[0]:
            rows = self.registry.rows(md5s[0])  # every name of that md5, not only this one
        first = rows[0]
        names = tuple(sorted({row.name for row in rows}))
        source = Source(first.md5, first.family, first.format, names)
        self._remember(self._sources, ident, source)
        return source

    def sources(self, md5s: list[str] | None = None) -> list[Source]:
        """Every registered source (or those of ``md5s``), by first name."""
        rows = self.registry.rows() if md5s is None else self.registry.rows_of(md5s)
        grouped: dict[str, list] = {}
        for row in rows:
            grouped.setdefault(row.md5, []).append(row)
        found = [
            Source(md5, rows[0].family, rows[0].format, tuple(sorted({r.name for r in rows})))
            for md5, rows in grouped.items()
        ]
        return sorted(found, key=lambda source: (source.names[0], source.md5))

    def page(self, offset: int, limit: int) -> tuple[list[Source], int]:
        """One page of sources in md5 order, and how many sources there are in all."""
        md5s = self.registry.md5s()
        return self.sources(md5s[offset : offset + limit]), len(md5s)

    def files(self, source: Source) -> Files | None:
        """The published files a viewer reads, or None while they are not built."""
        remembered = self._files.get(source.md5)
        if remembered is not None and remembered[0] > time.monotonic():
            return remembered[1]
        artifact = self.cache.lookup(key_for(source.family, source.md5, source.final_asset))
        if artifact is None:
            return None
        data, *rest = artifact.files
        files = Files(artifact, data, rest[0] if rest else None)
        self._remember(self._files, source.md5, files)
        return files

    def forget(self, source: Source) -> None:
        """Drop what is remembered of a source (its files went away under a reader)."""
        self._files.pop(source.md5, None)

    def _remember(self, memo: dict[str, tuple[float, Any]], key: str, value: Any) -> None:
        if len(memo) >= MEMO_SIZE:
            memo.clear()  # bounded: a flood of distinct ids costs re-reads, never memory
        memo[key] = (time.monotonic() + self.memo_seconds, value)

    def source_artifact(self, source: Source) -> Artifact | None:
        """The staged, verified source bytes (``?raw=true``), or None while not staged."""
        return self.cache.lookup(key_for(source.family, source.md5, "source"))
