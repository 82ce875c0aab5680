"""One object per family: its asset chain, the code version of each asset, and how it sorts,
indexes and checks.

Invariants:

- :data:`FAMILIES` is the one place a family's chain, versions, asset descriptions and marker
  processor names are written; :data:`CHAINS`, :func:`version_of`, :func:`chain_version`,
  :func:`job_name` and :func:`key_for` are derived from it.
- A family's ``processors`` strings are recorded verbatim in every artifact marker, so they never
  change with the code's layout (they name the processor functions as they were first published).
- Every asset of a chain has a version and a description; only assets after ``source`` have a
  processor, because staging is the same for every family (:mod:`genoflow.build.sources`).
- A processor is looked up on its module at call time (``intervals.sort_intervals``), so
  replacing the module's function replaces what a family runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from genoflow.core.errors import FormatError, ProcessingError
from genoflow.core.settings import Settings
from genoflow.processors import alignments, intervals
from genoflow.processors.alignments import checks as alignment_checks
from genoflow.processors.base import Result, SortCheck
from genoflow.processors.intervals import probes as interval_probes
from genoflow.storage.layout import ArtifactKey

SOURCE_VERSION = "1"
SOURCE_DESCRIPTION = "The source file staged from its best replica, md5- and size-verified."
# The asset check of each asset (``genoflow/defs/assets/checks.py``), named ``asset:check`` in
# outcomes.
CHECKS: dict[str, str] = {
    "source": "md5_and_size_match_manifest",
    "sorted": "records_preserved_and_ordered",
    "index": "answers_region_queries",
}


@dataclass(frozen=True)
class Family:
    """How the files of one family become artifacts.

    The base class is a chain of one asset, ``source``, kept as staged (the passthrough
    family): it has nothing to sort, index or check beyond the source, and refuses to.

    Attributes:
        name: the family's name, the first part of every artifact key.
        chain: its assets in build order, always starting with ``source``.
        versions: the code version of each asset of ``chain``.
        descriptions: the one-line description of each asset of ``chain`` (shown in the UI).
        processors: the name recorded in the marker of each built asset after ``source``.
    """

    name: str
    chain: tuple[str, ...]
    versions: Mapping[str, str]
    descriptions: Mapping[str, str]
    processors: Mapping[str, str]

    def version(self, asset: str) -> str:
        """The code version (Dagster ``code_version``) of one asset of this family."""
        return self.versions[asset]

    def sort(
        self,
        source_path: Path,
        out_dir: Path,
        *,
        fmt: str,
        work_dir: Path,
        settings: Settings,
        name: str,
    ) -> Result:
        """Write the sorted, BGZF-compressed copy of ``source_path`` into ``out_dir``.

        Raises:
            ProcessingError: the family has no ``sorted`` asset.
        """
        raise self._no_asset("sorted", "sort", name)

    def index(
        self, sorted_path: Path, out_dir: Path, *, fmt: str, settings: Settings, name: str
    ) -> Result:
        """Write the sorted file beside its index into ``out_dir``.

        Raises:
            ProcessingError: the family has no ``index`` asset.
        """
        raise self._no_asset("index", "index", name)

    def check_order(self, path: Path, *, fmt: str, name: str) -> SortCheck:
        """Re-read a sorted file and prove its order and record count.

        Raises:
            ProcessingError: the family has no ``sorted`` asset.
        """
        raise self._no_asset("sorted", "check", name)

    def query_regions(self, index_folder: Path, *, fmt: str, name: str) -> dict[str, int]:
        """Run one region query per contig through an index folder; contig → records.

        Raises:
            ProcessingError: the family has no ``index`` asset.
        """
        raise self._no_asset("index", "check", name)

    def indexed_counts(self, path: Path, *, fmt: str, name: str) -> list[tuple[str, int]]:
        """(contig, records) as the index beside ``path`` holds them, reading the index only.

        Raises:
            ProcessingError: the family has no ``index`` asset.
        """
        raise self._no_asset("index", "check", name)

    def probe(self, path: Path, contigs: list[str], *, fmt: str, name: str) -> str | None:
        """Prove the contig order and read each contig's first record through the index.

        Returns:
            None when all holds, else what does not.

        Raises:
            ProcessingError: the family has no ``index`` asset.
        """
        raise self._no_asset("index", "check", name)

    def _no_asset(self, asset: str, stage: str, name: str) -> ProcessingError:
        return ProcessingError(
            f"the {self.name} family has no {asset} asset: its files are kept as staged",
            file=name,
            stage=stage,
            hint=f"use the {self.name} family's chain ({', '.join(self.chain)}) only",
        )


@dataclass(frozen=True)
class Alignments(Family):
    """SAM/BAM: sorted to a coordinate-sorted BAM, indexed with a BAI or CSI."""

    def sort(
        self,
        source_path: Path,
        out_dir: Path,
        *,
        fmt: str,
        work_dir: Path,
        settings: Settings,
        name: str,
    ) -> Result:
        """Sort (converting SAM to BAM) with :func:`alignments.sort_alignments`."""
        return alignments.sort_alignments(
            source_path,
            out_dir,
            work_dir=work_dir,
            memory=settings.sort_memory,
            threads=settings.threads,
            name=name,
            max_expansion=settings.max_expansion,
        )

    def index(
        self, sorted_path: Path, out_dir: Path, *, fmt: str, settings: Settings, name: str
    ) -> Result:
        """Index with :func:`alignments.index_alignments`."""
        return alignments.index_alignments(
            sorted_path, out_dir, threads=settings.threads, name=name
        )

    def check_order(self, path: Path, *, fmt: str, name: str) -> SortCheck:
        """Prove coordinate order with :func:`alignments.check_sorted`."""
        return alignments.check_sorted(path, name=name)

    def query_regions(self, index_folder: Path, *, fmt: str, name: str) -> dict[str, int]:
        """Query each contig with :func:`alignments.query_index`."""
        return alignments.query_index(index_folder, name=name)

    def indexed_counts(self, path: Path, *, fmt: str, name: str) -> list[tuple[str, int]]:
        """The BAI/CSI statistics, with :func:`alignment_checks.indexed_counts`."""
        return alignment_checks.indexed_counts(path, name=name)

    def probe(self, path: Path, contigs: list[str], *, fmt: str, name: str) -> str | None:
        """SO:coordinate, @SQ order and a record per contig (:mod:`alignment_checks`)."""
        return alignment_checks.probe_contigs(path, [c for c in contigs if c != "*"], name=name)


@dataclass(frozen=True)
class Intervals(Family):
    """VCF, BED, GFF3/GTF, peaks, bigBed: sorted by contig then start, indexed with tabix."""

    def sort(
        self,
        source_path: Path,
        out_dir: Path,
        *,
        fmt: str,
        work_dir: Path,
        settings: Settings,
        name: str,
    ) -> Result:
        """Sort and BGZF-compress with :func:`intervals.sort_intervals`."""
        return intervals.sort_intervals(
            source_path,
            out_dir,
            fmt=fmt,
            work_dir=work_dir,
            memory=settings.sort_memory,
            threads=settings.threads,
            name=name,
            max_expansion=settings.max_expansion,
        )

    def index(
        self, sorted_path: Path, out_dir: Path, *, fmt: str, settings: Settings, name: str
    ) -> Result:
        """Index with :func:`intervals.index_intervals` (TBI, or CSI for long contigs)."""
        return intervals.index_intervals(sorted_path, out_dir, fmt=fmt, name=name)

    def check_order(self, path: Path, *, fmt: str, name: str) -> SortCheck:
        """Prove contig-then-start order with :func:`intervals.check_sorted`."""
        return intervals.check_sorted(path, fmt=fmt, name=name)

    def query_regions(self, index_folder: Path, *, fmt: str, name: str) -> dict[str, int]:
        """Query each contig with :func:`intervals.query_index`."""
        return intervals.query_index(index_folder, fmt=fmt, name=name)

    def indexed_counts(self, path: Path, *, fmt: str, name: str) -> list[tuple[str, int]]:
        """The tabix index's per-contig records, with :func:`interval_probes.indexed_counts`."""
        return interval_probes.indexed_counts(path, name=name)

    def probe(self, path: Path, contigs: list[str], *, fmt: str, name: str) -> str | None:
        """Contig order against the header, then one record per contig (:mod:`interval_probes`)."""
        problem = interval_probes.contig_order_problem(path, contigs, fmt=fmt, name=name)
        return problem or interval_probes.probe_contigs(path, contigs, name=name)


_SORTED_CHAIN = ("source", "sorted", "index")


def _sorting(family: type[Family], module: ModuleType, sorted_: str, index: str) -> Family:
    """A family whose chain is source → sorted → index, built by ``module``'s
    ``sort_{name}`` and ``index_{name}`` at its ``SORT_VERSION`` and ``INDEX_VERSION``."""
    name = module.__name__.rsplit(".", 1)[1]
    return family(
        name=name,
        chain=_SORTED_CHAIN,
        versions={
            "source": SOURCE_VERSION,
            "sorted": module.SORT_VERSION,
            "index": module.INDEX_VERSION,
        },
        descriptions={"source": SOURCE_DESCRIPTION, "sorted": sorted_, "index": index},
        processors={
            "sorted": f"{module.__name__}.sort_{name}",
            "index": f"{module.__name__}.index_{name}",
        },
    )


ALIGNMENTS = _sorting(
    Alignments,
    alignments,
    "Coordinate-sorted BAM (SO:coordinate, unmapped reads last).",
    "The sorted BAM with its BAI (or CSI for contigs ≥ 2^29 bp).",
)
INTERVALS = _sorting(
    Intervals,
    intervals,
    "Records sorted by contig then start, BGZF-compressed, header on top.",
    "The sorted BGZF file with its tabix TBI (or CSI for positions ≥ 2^29).",
)
PASSTHROUGH = Family(
    name="passthrough",
    chain=("source",),
    versions={"source": SOURCE_VERSION},
    descriptions={"source": SOURCE_DESCRIPTION},
    processors={},
)

FAMILIES: dict[str, Family] = {
    family.name: family for family in (ALIGNMENTS, INTERVALS, PASSTHROUGH)
}
CHAINS: dict[str, tuple[str, ...]] = {name: family.chain for name, family in FAMILIES.items()}


def family_named(name: str) -> Family:
    """The family object called ``name``.

    Raises:
        FormatError: no family has that name.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise FormatError(
            f"unknown family {name!r}; known families: {', '.join(FAMILIES)}",
            stage="build",
            hint="the registry or cache was written by another genoflow version; "
            "run the manifest again with this one",
        ) from None


def version_of(family: str, asset: str) -> str:
    """The processor version (Dagster ``code_version``) of one asset of one family."""
    return family_named(family).version(asset)


def job_name(family: str) -> str:
    """The Dagster job that builds a family's whole chain for one md5."""
    return f"{family}_chain"


def chain_version(family: str) -> str:
    """The code versions of a family's chain, e.g. ``source1.sorted1.index1``."""
    return ".".join(f"{asset}{version_of(family, asset)}" for asset in CHAINS[family])


def key_for(family: str, md5: str, asset: str) -> ArtifactKey:
    """The cache key of one asset of one family's chain for one md5, at today's version."""
    return ArtifactKey(family, md5, asset, version_of(family, asset))
