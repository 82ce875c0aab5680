"""Coordinate-sort and index SAM/BAM through pysam's bundled samtools.

Invariant: ``out_dir`` holds either a complete, verified output (record count equal to the
input's, BGZF end-of-file block present, ``SO:coordinate``) or nothing this module wrote.
Temporary sort files live in a private folder inside ``work_dir`` and are removed on every path.

pysam runs samtools in-process: its own stderr is captured into ``SamtoolsError.value``, but
htslib's log lines (``[E::sam_parse1] …``) go straight to the process's stderr, and some faults
(a RNAME missing from @SQ, a BGZF file cut at a block boundary) are only warnings there. Those
are checked before samtools runs (:mod:`genoflow.processors.sam_input`); samtools itself is
called through :mod:`genoflow.processors.samtools`.
"""

from __future__ import annotations

from pathlib import Path

import pysam

from genoflow.errors import ProcessingError
from genoflow.processors import samtools
from genoflow.processors.base import Result, SortCheck, link_or_copy, require_output
from genoflow.processors.sam_input import require_bgzf_eof, scan_sam, sniff

__all__ = [
    "CSI_THRESHOLD",
    "INDEX_VERSION",
    "SORT_VERSION",
    "check_sorted",
    "count_records",
    "index_alignments",
    "query_index",
    "sort_alignments",
]

SORT_VERSION = "1"
INDEX_VERSION = "1"
CSI_THRESHOLD = 1 << 29
_UNMAPPED_LAST = 1 << 62


def sort_alignments(
    src: str | Path,
    out_dir: str | Path,
    *,
    work_dir: str | Path,
    memory: int,
    threads: int,
    name: str,
) -> Result:
    """Coordinate-sort SAM (plain, gzip or BGZF) or BAM into ``out_dir/sorted.bam``.

    Records are ordered by @SQ order then position, unmapped reads last, exactly as
    ``samtools sort`` orders them; ``--no-PG`` keeps two builds of one input byte-identical.

    Args:
        src: the input SAM, SAM.gz (gzip or BGZF) or BAM, in any order.
        out_dir: existing folder that receives ``sorted.bam``.
        work_dir: existing folder for temporary sort runs (a private sub-folder is used).
        memory: total memory cap in bytes, shared by all sorting threads. Each thread gets at
            least 1 MiB (samtools' floor); when the cap is too small for ``threads`` of them,
            fewer threads are used.
        threads: sorting and compression threads.
        name: the file's user-facing name, used in errors.

    Returns:
        The sorted BAM, input and output record counts, and metadata.

    Raises:
        ValueError: ``memory`` below 1 MiB or ``threads`` below 1.
        ProcessingError: the input is empty, truncated or malformed, or records were lost.
    """
    src, out_dir, work_dir = Path(src), Path(out_dir), Path(work_dir)
    used_threads, per_thread = samtools.sort_budget(memory, threads)
    kind, compression = sniff(src, name=name, stage="sort")
    if kind == "sam":
        records_in = scan_sam(src, compressed=compression != "none", name=name)
    else:
        records_in = samtools.count(src, threads=used_threads, name=name, stage="sort")
    out = out_dir / "sorted.bam"
    try:
        spills = samtools.run_sort(src, out, work_dir, per_thread, used_threads, name=name)
        records_out, mapped, contigs = _verify_sorted(out, records_in, used_threads, name=name)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    metadata = {
        "input_format": kind,
        "input_compression": compression,
        "contigs": contigs,
        "mapped": mapped,
        "unmapped": records_out - mapped,
        "sort_order": "coordinate",
        "memory_per_thread": per_thread,
        "threads": used_threads,
        "spill_files": spills,
    }
    return Result([out], records_in, records_out, metadata)


def _verify_sorted(out: Path, records_in: int, threads: int, *, name: str) -> tuple[int, int, int]:
    """Prove the sorted BAM is whole and lost nothing; return (records, mapped, contigs)."""
    samtools.run(pysam.quickcheck, str(out), name=name, stage="sort", what="quickcheck")
    records_out, mapped = samtools.flagstat(out, threads=threads, name=name)
    if records_out != records_in:
        lost = f"sorting changed the record count from {records_in} to {records_out}"
        raise ProcessingError(lost, file=name, stage="sort")
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as bam:
        return records_out, mapped, bam.nreferences


def index_alignments(bam: str | Path, out_dir: str | Path, *, threads: int, name: str) -> Result:
    """Place a coordinate-sorted BAM in ``out_dir`` and index it (BAI, or CSI for long contigs).

    Args:
        bam: a coordinate-sorted BAM, typically another artifact's ``sorted.bam``.
        out_dir: existing folder that receives ``sorted.bam`` (hard link or copy) and its index.
        threads: indexing threads.
        name: the file's user-facing name, used in errors.

    Returns:
        ``[data, index]``, the record count read from the index, and ``{"index": "bai"|"csi"}``.

    Raises:
        ProcessingError: the BAM is truncated, not coordinate-sorted, or cannot be indexed.
    """
    bam, out_dir = Path(bam), Path(out_dir)
    require_bgzf_eof(bam, name=name, stage="index")
    header = _read_header(bam, name=name, stage="index")
    order = header.get("HD", {}).get("SO")
    if order != "coordinate":
        raise _unsorted(f"the header declares SO:{order or 'none'}, not SO:coordinate", name)
    kind = "csi" if any(sq["LN"] >= CSI_THRESHOLD for sq in header.get("SQ", [])) else "bai"
    data, index = out_dir / "sorted.bam", out_dir / f"sorted.bam.{kind}"
    in_place = data.exists() and data.samefile(bam)
    try:
        if not in_place:
            link_or_copy(bam, data)
        args = ["-c"] if kind == "csi" else []
        args += ["-@", str(threads), str(data)]
        hint = "the records are not in coordinate order, or the BAM is corrupt: sort it again"
        samtools.run(pysam.index, *args, name=name, stage="index", what="index", hint=hint)
        require_output(index, name=name, stage="index")
        _require_contig_order(data, name=name)
        stats = samtools.run(pysam.idxstats, str(data), name=name, stage="index", what="idxstats")
        records = sum(int(f[2]) + int(f[3]) for f in (ln.split("\t") for ln in stats.splitlines()))
    except BaseException:
        index.unlink(missing_ok=True)
        if not in_place:
            data.unlink(missing_ok=True)
        raise
    return Result([data, index], records, records, {"index": kind})


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
        with pysam.AlignmentFile(str(bam), "rb") as handle:
            if not handle.has_index():
                missing = f"{bam.name} has no .bai or .csi index next to it"
                raise ProcessingError(missing, file=name, stage="query", hint="index it first")
            counts = {contig: handle.count(contig=contig) for contig in handle.references}
            counts["*"] = handle.count(contig="*")
    except (OSError, ValueError) as error:
        raise ProcessingError(f"region query failed: {error}", file=name, stage="query") from error
    return counts


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


def _read_header(bam: Path, *, name: str, stage: str) -> dict:
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            return handle.header.to_dict()
    except (OSError, ValueError) as error:
        raise ProcessingError(f"cannot read its header: {error}", file=name, stage=stage) from error


def _locus(handle: pysam.AlignmentFile, tid: int, start: int) -> str:
    return f"{handle.get_reference_name(tid)}:{start + 1}" if tid >= 0 else "*"


def _require_contig_order(data: Path, *, name: str) -> None:
    """samtools index accepts whole contigs out of @SQ order; the index shows where each begins."""
    with pysam.AlignmentFile(str(data), "rb") as handle:
        previous, before = -1, ""
        for contig in (*handle.references, "*"):
            if next(handle.fetch(contig=contig), None) is None:
                continue
            if handle.tell() < previous:
                raise _unsorted(f"contig {contig} comes before {before}, against @SQ order", name)
            previous, before = handle.tell(), contig


def _unsorted(what: str, name: str) -> ProcessingError:
    hint = "sort the BAM by coordinate first"
    return ProcessingError(f"not coordinate-sorted: {what}", file=name, stage="index", hint=hint)
