"""Read-only checks of BAM files: coordinate order, region queries through the index, counts.

Invariant: nothing here writes a file; a BAM that cannot be read is a
:class:`~genoflow.core.errors.ProcessingError` naming the file and the stage, never a wrong answer.
Region queries name a contig by its id (tid), never by a region string: names may hold ``:``
and ``-`` (``chr1:100-200``, ``HLA-A*01:01:01:01``), which htslib would read as a range.
"""

from __future__ import annotations

from pathlib import Path

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.processors.alignments import samtools
from genoflow.processors.alignments.sam_input import require_bgzf_eof, sniff
from genoflow.processors.base import SortCheck

__all__ = ["check_sorted", "count_records", "indexed_counts", "probe_contigs", "query_index"]

_UNMAPPED_LAST = 1 << 62


def check_sorted(bam: str | Path, *, name: str) -> SortCheck:
    """Stream a BAM and prove it is coordinate-sorted, in bounded memory.

    Args:
        bam: the BAM to check.
        name: the file's user-facing name, used in errors.

    Returns:
        The record count, whether the order holds, and the first violation (header or record).

    Raises:
        ProcessingError: the BAM is truncated or cannot be read.
    """
    bam = Path(bam)
    require_bgzf_eof(bam, name=name, stage="check")
    problem: str | None = None
    records = 0
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            order = handle.header.to_dict().get("HD", {}).get("SO")
            if order != "coordinate":
                problem = f"header declares SO:{order or 'none'}, not SO:coordinate"
            previous, last = -1, (-1, -1)
            for read in handle.fetch(until_eof=True):
                records += 1
                tid, start = read.reference_id, read.reference_start
                key = (tid << 32 | (start + 1)) if tid >= 0 else _UNMAPPED_LAST
                if key < previous and problem is None:
                    here, before = _locus(handle, tid, start), _locus(handle, *last)
                    problem = f"record {records} ({read.query_name}): {here} after {before}"
                previous, last = key, (tid, start)
    except (OSError, ValueError) as error:
        raise ProcessingError(f"cannot read the BAM: {error}", file=name, stage="check") from error
    return SortCheck(records=records, ordered=problem is None, problem=problem)


def query_index(folder_or_bam: str | Path, *, name: str) -> dict[str, int]:
    """Count records per @SQ contig through the index, plus ``"*"`` for unplaced unmapped reads.

    Args:
        folder_or_bam: a folder written by :func:`index_alignments`, or a BAM next to its index.
        name: the file's user-facing name, used in errors.

    Returns:
        Contig name to record count, in header order, ``"*"`` last; the values sum to the total.

    Raises:
        ProcessingError: there is no usable index, or a region query fails.
    """
    path = Path(folder_or_bam)
    bam = path / "sorted.bam" if path.is_dir() else path
    try:
        # check_sq=False: an unaligned BAM (no @SQ, every read unmapped) is valid; its reads
        # are all counted under "*".
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            if not handle.has_index():
                missing = f"{bam.name} has no .bai or .csi index next to it"
                raise ProcessingError(missing, file=name, stage="query", hint="index it first")
            counts = {
                contig: sum(1 for _ in handle.fetch(tid=tid))
                for tid, contig in enumerate(handle.references)
            }
            # "*" is not a name but htslib's HTS_IDX_NOCOOR: the reads placed on no contig.
            counts["*"] = sum(1 for _ in handle.fetch(contig="*"))
    except (OSError, ValueError) as error:
        raise ProcessingError(f"region query failed: {error}", file=name, stage="query") from error
    return counts


def indexed_counts(bam: str | Path, *, name: str) -> list[tuple[str, int]]:
    """(contig, records) for every @SQ contig from the index's own statistics, ``"*"`` last.

    A BAI or CSI holds, per contig, the mapped and unmapped records the indexer read, and the
    reads placed on no contig; nothing but the index is read.

    Raises:
        ProcessingError: stage ``check``, when there is no index or it cannot be read.
    """
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            if not handle.has_index():
                raise ProcessingError(
                    f"{Path(bam).name} has no .bai or .csi index next to it",
                    file=name, stage="check", hint="index it first",
                )  # fmt: skip
            stats = {s.contig: s.total for s in handle.get_index_statistics()}
            counts = [(contig, stats.get(contig, 0)) for contig in handle.references]
            return [*counts, ("*", handle.nocoordinate)]
    except (OSError, ValueError) as error:
        raise ProcessingError(
            f"cannot read the index: {error}", file=name, stage="check"
        ) from error


def probe_contigs(bam: str | Path, contigs: list[str], *, name: str) -> str | None:
    """Query each of ``contigs`` by its id and read its first record only; they must lie on
    the contig queried, at offsets that grow in @SQ order, under a ``SO:coordinate`` header.

    Returns:
        None when all holds, else the first thing that does not.

    Raises:
        ProcessingError: stage ``query``, when the BAM or its index cannot be read.
    """
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            order = handle.header.to_dict().get("HD", {}).get("SO")
            if order != "coordinate":
                return f"header declares SO:{order or 'none'}, not SO:coordinate"
            wanted, previous, before = set(contigs), -1, ""
            for tid, contig in enumerate(handle.references):
                if contig not in wanted:
                    continue
                first = next(handle.fetch(tid=tid), None)
                if first is None or first.reference_id != tid:
                    return f"a region query for contig {contig} found none of its records"
                if handle.tell() < previous:
                    return f"contig {contig} comes before {before}, against @SQ order"
                previous, before = handle.tell(), contig
    except (OSError, ValueError) as error:
        raise ProcessingError(f"region query failed: {error}", file=name, stage="query") from error
    return None


def count_records(path: str | Path, *, threads: int = 1, name: str) -> int:
    """Count the non-header records of a SAM (plain or compressed) or BAM file.

    Args:
        path: the SAM, SAM.gz or BAM file.
        threads: decompression threads.
        name: the file's user-facing name, used in errors.

    Returns:
        The number of records (secondary and supplementary alignments included).

    Raises:
        ProcessingError: the file is truncated or cannot be parsed.
    """
    path = Path(path)
    sniff(path, name=name, stage="count")
    return samtools.count(path, threads=threads, name=name, stage="count")


def _locus(handle: pysam.AlignmentFile, tid: int, start: int) -> str:
    return f"{handle.get_reference_name(tid)}:{start + 1}" if tid >= 0 else "*"
