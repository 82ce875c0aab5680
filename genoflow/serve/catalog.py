"""What the service can serve: registered sources, found by md5 or by name, and their artifacts.

Invariant: a request's identifier is only ever compared with registry values (an md5, or a
manifest name); every path served comes from the cache's own layout and the artifact's
``genoflow.json``, never from the request. An artifact is served only when the cache finds it
whole (present, and every file of its marker at its recorded size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from genoflow.build.steps import CHAINS, key_for
from genoflow.core.errors import GenoflowError
from genoflow.storage.cache import Artifact, Cache
from genoflow.storage.registry import Registry

MD5 = re.compile(r"[0-9a-f]{32}")


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

    Args:
        registry: the source registry (``genoflow run``'s and the UI's).
        cache: this node's content-addressed cache.
    """

    def __init__(self, registry: Registry, cache: Cache) -> None:
        self.registry = registry
        self.cache = cache

    def resolve(self, ident: str) -> Source:
        """The source an identifier names: an md5, or a manifest name only one md5 has.

        Raises:
            UnknownSource: nothing registered answers to it.
            AmbiguousName: several md5s carry that name.
        """
        rows = self.registry.rows(ident) if MD5.fullmatch(ident) else []
        if not rows:
            rows = [row for row in self.registry.rows() if row.name == ident]
        md5s = sorted({row.md5 for row in rows})
        if not md5s:
            raise UnknownSource("no registered source has this md5 or name", file=ident)
        if len(md5s) > 1:
            raise AmbiguousName(ident, md5s)
        first = rows[0]
        names = tuple(sorted({row.name for row in rows}))
        return Source(first.md5, first.family, first.format, names)

    def sources(self) -> list[Source]:
        """Every registered source, by first name."""
        grouped: dict[str, list] = {}
        for row in self.registry.rows():
            grouped.setdefault(row.md5, []).append(row)
        found = [
            Source(md5, rows[0].family, rows[0].format, tuple(sorted({r.name for r in rows})))
            for md5, rows in grouped.items()
        ]
        return sorted(found, key=lambda source: (source.names[0], source.md5))

    def files(self, source: Source) -> Files | None:
        """The published files a viewer reads, or None while they are not built."""
        artifact = self.cache.lookup(key_for(source.family, source.md5, source.final_asset))
        if artifact is None:
            return None
        data, *rest = artifact.files
        return Files(artifact, data, rest[0] if rest else None)

    def source_artifact(self, source: Source) -> Artifact | None:
        """The staged, verified source bytes (``?raw=true``), or None while not staged."""
        return self.cache.lookup(key_for(source.family, source.md5, "source"))
