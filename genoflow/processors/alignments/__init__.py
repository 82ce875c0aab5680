"""Coordinate-sort and index SAM/BAM with samtools: Debian's on PATH, or pysam's bundled one.

Invariant: ``out_dir`` holds either a complete, verified output (record count equal to the
input's, BGZF end-of-file block present, ``SO:coordinate``) or nothing this module wrote.
Temporary sort files live in a private folder inside ``work_dir`` and are removed on every path.

pysam runs samtools in-process: its own stderr is captured into ``SamtoolsError.value``, but
htslib's log lines (``[E::sam_parse1] …``) go straight to the process's stderr, and some faults (a
RNAME missing from @SQ, a BGZF file cut at a block boundary) are only warnings there. Those are
checked before samtools runs (:mod:`genoflow.processors.alignments.sam_input`); samtools itself is
called through :mod:`genoflow.processors.alignments.samtools`, as :mod:`genoflow.processors.engine`
chooses (``GENOFLOW_ENGINE``). Order checks, region queries and record counts that only read live in
:mod:`genoflow.processors.alignments.checks` and are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.processors import engine
from genoflow.processors.alignments import samtools
from genoflow.processors.alignments.checks import check_sorted, count_records, query_index
from genoflow.processors.alignments.sam_input import require_bgzf_eof, scan_sam, sniff, sq_lengths
from genoflow.processors.base import Result, link_or_copy, require_output
from genoflow.processors.limits import (
    DEFAULT_MAX_EXPANSION,
    ExpansionGuard,
    bgzf_expanded_size,
    require_free_space,
)

__all__ = [
    "BAM_MAX_LENGTH",
    "CSI_THRESHOLD",
    "INDEX_VERSION",
    "SORT_VERSION",
    "check_sorted",
    "count_records",
    "index_alignments",
    "query_index",
    "sort_alignments",
]

SORT_VERSION = "2"
INDEX_VERSION = "2"
CSI_THRESHOLD = 1 << 29
BAM_MAX_LENGTH = (1 << 31) - 1
"""The longest reference BAM can hold: its header stores lengths as signed 32-bit integers."""


def sort_alignments(
    src: str | Path,
    out_dir: str | Path,
    *,
    work_dir: str | Path,
    memory: int,
    threads: int,
    name: str,
    max_expansion: float = DEFAULT_MAX_EXPANSION,
) -> Result:
    """Coordinate-sort SAM (plain, gzip or BGZF) or BAM into ``out_dir/sorted.bam``, indexed.

    Records are ordered by @SQ order then position, unmapped reads last, exactly as
    ``samtools sort`` orders them; ``--no-PG`` keeps two builds of one input byte-identical.
    The index (``sorted.bam.bai``, or ``.csi`` when a @SQ length reaches 2^29) is written in the
    same pass (``--write-index``); :func:`index_alignments` adopts it rather than re-reading the
    BAM. The input's records are counted while samtools sorts (the htslib-cli engine), and the
    output's are read from the index, which proves none was lost.

    Args:
        src: the input SAM, SAM.gz (gzip or BGZF) or BAM, in any order.
        out_dir: existing folder that receives ``sorted.bam`` and its index.
        work_dir: existing folder for temporary sort runs (a private sub-folder is used).
        memory: total memory cap in bytes, shared by all sorting threads. Each thread gets at
            least 1 MiB (samtools' floor); when the cap is too small for ``threads`` of them,
            fewer threads are used.
        threads: sorting and compression threads.
        name: the file's user-facing name, used in errors.
        max_expansion: the cap on decompressed bytes per byte of a compressed input
            (``GENOFLOW_MAX_EXPANSION``; 0 means no cap).

    Returns:
        ``[sorted.bam, index]``, input and output record counts, and metadata.

    Raises:
        ValueError: ``memory`` below 1 MiB or ``threads`` below 1.
        ProcessingError: the input is empty, truncated or malformed; a @SQ length is beyond
            what BAM can hold; it decompresses beyond the cap; the work folder lacks the space;
            or records were lost.
    """
    src, out_dir, work_dir = Path(src), Path(out_dir), Path(work_dir)
    used_threads, per_thread = samtools.sort_budget(memory, threads)
    kind, compression = sniff(src, name=name, stage="sort")
    tools = engine.choose("samtools", name=name, stage="sort")
    guard = ExpansionGuard(src, max_expansion, name=name, stage="sort")
    if compression == "bgzf":
        guard.check_declared(bgzf_expanded_size(src))
    # The spilled runs and the output are BGZF-compressed BAM: twice the input's size on disk.
    why = "room for the sort's runs and its output: twice its size on disk"
    require_free_space(work_dir, 2 * src.stat().st_size, name=name, stage="sort", why=why)
    plan = _InputPlan(src, kind, compression, tools, work_dir, guard)
    count, index_kind = _input_plan(plan, name=name)
    out = out_dir / "sorted.bam"
    index = out_dir / f"sorted.bam.{index_kind}"
    try:
        records_in, spills = samtools.sort_indexed(
            src, out, index, work_dir, per_thread, used_threads, tools=tools, name=name,
            records_in=count,
        )  # fmt: skip
        records_out, mapped, contigs = _verify_sorted(out, index, records_in, name=name)
    except BaseException:
        out.unlink(missing_ok=True)
        index.unlink(missing_ok=True)
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
        "index": index_kind,
        **tools.metadata(),
    }
    return Result([out, index], records_in, records_out, metadata)


class _InputPlan(NamedTuple):
    """What :func:`_input_plan` needs to know about the input."""

    src: Path
    kind: str
    compression: str
    tools: engine.Tools
    work_dir: Path
    guard: ExpansionGuard


def _input_plan(plan: _InputPlan, *, name: str) -> tuple[Callable[[], int], str]:
    """How to count the input's records (SAM: the validating scan), and the index kind.

    Raises:
        ProcessingError: a @SQ length is beyond what BAM can hold.
    """
    src, compressed = plan.src, plan.compression != "none"
    if plan.kind == "sam":
        contigs = sq_lengths(src, compressed=compressed, name=name)
        guard = plan.guard if compressed else None
        count = partial(scan_sam, src, compressed=compressed, name=name, guard=guard)
    else:
        header = _read_header(src, name=name, stage="sort").get("SQ", [])
        contigs = [(sq["SN"], sq["LN"]) for sq in header]
        count = partial(samtools.count, src, threads=1, name=name, stage="sort",
                        tools=plan.tools, scratch=plan.work_dir)  # fmt: skip
    _require_bam_lengths(contigs, name=name)
    needs_csi = any(length >= CSI_THRESHOLD for _, length in contigs)
    return count, "csi" if needs_csi else "bai"


def _require_bam_lengths(contigs: list[tuple[str, int]], *, name: str) -> None:
    """BAM stores a reference's length in 31 bits: refuse longer ones before sorting."""
    for contig, length in contigs:
        if length > BAM_MAX_LENGTH:
            raise ProcessingError(
                f"contig {contig} is {length} bp, longer than BAM can hold (2^31-1); the file "
                "is valid, but genoflow writes only BAM for alignments",
                file=name,
                stage="sort",
                hint="keep it as SAM for now (bgzipped SAM with a CSI index, or CRAM, is a "
                "later step), or split the contig below 2^31-1 bp",
            )


def _verify_sorted(out: Path, index: Path, records_in: int, *, name: str) -> tuple[int, int, int]:
    """Prove the sorted BAM is whole and lost nothing; return (records, mapped, contigs)."""
    require_bgzf_eof(out, name=name, stage="sort")
    require_output(index, name=name, stage="sort")
    # The BAM's last block is written after its index: mark the index as the newer of the two.
    os.utime(index)
    samtools.quickcheck(out, name=name, stage="sort")
    records_out, mapped = samtools.idxstats(out, name=name, stage="sort")
    if records_out != records_in:
        lost = f"sorting changed the record count from {records_in} to {records_out}"
        raise ProcessingError(lost, file=name, stage="sort")
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as bam:
        return records_out, mapped, bam.nreferences


def index_alignments(bam: str | Path, out_dir: str | Path, *, threads: int, name: str) -> Result:
    """Place a coordinate-sorted BAM in ``out_dir`` with its index (BAI, or CSI for long contigs).

    An index of the right kind beside ``bam`` that is at least as new as it (as
    :func:`sort_alignments` writes) is adopted; otherwise the BAM is indexed. Either way the
    index must show every contig's records in @SQ order, and its counts are the result's.

    Args:
        bam: a coordinate-sorted BAM, typically another artifact's ``sorted.bam``.
        out_dir: existing folder that receives ``sorted.bam`` (hard link or copy) and its index.
        threads: indexing threads.
        name: the file's user-facing name, used in errors.

    Returns:
        ``[data, index]``, the record count read from the index, and metadata ``index``
        (bai/csi), ``index_built_by`` (``sort`` or ``index``), ``engine``, ``engine_versions``.

    Raises:
        ProcessingError: the BAM is truncated, not coordinate-sorted, or cannot be indexed.
    """
    bam, out_dir = Path(bam), Path(out_dir)
    require_bgzf_eof(bam, name=name, stage="index")
    header = _read_header(bam, name=name, stage="index")
    order = header.get("HD", {}).get("SO")
    if order != "coordinate":
        raise _unsorted(f"the header declares SO:{order or 'none'}, not SO:coordinate", name)
    kind = _index_kind(header)
    data, index = out_dir / "sorted.bam", out_dir / f"sorted.bam.{kind}"
    built = _fresh_index(bam, kind)
    tools = engine.choose("samtools", name=name, stage="index")
    created: list[Path] = []
    try:
        if not (data.exists() and data.samefile(bam)):
            created.append(link_or_copy(bam, data))
        if built is None:
            created.append(index)
            samtools.index(data, csi=kind == "csi", threads=threads, tools=tools, name=name,
                           scratch=out_dir)  # fmt: skip
        elif not (index.exists() and index.samefile(built)):
            created.append(link_or_copy(built, index))
        require_output(index, name=name, stage="index")
        _require_contig_order(data, name=name)
        records, _ = samtools.idxstats(data, name=name, stage="index")
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    metadata = {"index": kind, "index_built_by": "index" if built is None else "sort"}
    return Result([data, index], records, records, {**metadata, **tools.metadata()})


def _index_kind(header: dict) -> str:
    """BAI cannot address positions at or beyond 2^29: such references need CSI."""
    return "csi" if any(sq["LN"] >= CSI_THRESHOLD for sq in header.get("SQ", [])) else "bai"


def _fresh_index(bam: Path, kind: str) -> Path | None:
    """The ``kind`` index beside ``bam`` when it was written no earlier than ``bam`` itself."""
    index = bam.with_name(f"{bam.name}.{kind}")
    if index.is_file() and index.stat().st_mtime_ns >= bam.stat().st_mtime_ns:
        return index
    return None


def _read_header(bam: Path, *, name: str, stage: str) -> dict:
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            return handle.header.to_dict()
    except (OSError, ValueError) as error:
        raise ProcessingError(f"cannot read its header: {error}", file=name, stage=stage) from error


def _require_contig_order(data: Path, *, name: str) -> None:
    """samtools index accepts whole contigs out of @SQ order; the index shows where each begins."""
    with pysam.AlignmentFile(str(data), "rb", check_sq=False) as handle:
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
