"""Sort, BGZF-compress and tabix-index interval files: VCF, BED, narrowPeak, broadPeak, GFF3,
GTF, and bigBed (converted to BED first).

Invariant: ``out_dir`` holds either a complete output — header lines first, then every input
record in (contig, start, whole line) byte order, exactly as ``LC_ALL=C sort -k1,1 -k2,2n``
orders BED (VCF contigs follow the header's ``##contig`` order when it has one), with its tabix
index beside it — or nothing this module wrote. Python never holds more than a chunk of lines;
GNU sort holds the records within the memory cap and spills the rest to ``work_dir``.

Two paths give the same bytes: :mod:`~genoflow.processors.intervals.direct` (GNU sort reads the
records straight from the file while Python validates them alongside) for files whose records are
plain lines, and :mod:`~genoflow.processors.intervals.streamed` (Python reads, validates and keys
every line) for the rest. Compression and indexing go through ``bgzip``/``tabix`` or pysam, as
:mod:`~genoflow.processors.engine` chooses (``GENOFLOW_ENGINE``).

Indexing lives in :mod:`genoflow.processors.intervals.tabix`, order checks and region queries in
:mod:`genoflow.processors.intervals.checks`; both are re-exported here.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from genoflow.core.errors import ProcessingError
from genoflow.processors import engine
from genoflow.processors.base import Result
from genoflow.processors.intervals.bgzf import compression_of, decompress_to
from genoflow.processors.intervals.bigbed import bigbed_to_bed
from genoflow.processors.intervals.direct import sort_direct
from genoflow.processors.intervals.records import LineSource, RecordReader
from genoflow.processors.intervals.sortjob import SortJob, SortStats
from genoflow.processors.intervals.streamed import sort_streamed
from genoflow.processors.intervals.tabix import (
    CSI_THRESHOLD,
    check_sorted,
    index_facts,
    index_intervals,
    query_index,
    write_index,
)
from genoflow.processors.limits import (
    DEFAULT_MAX_EXPANSION,
    ExpansionGuard,
    bgzf_expanded_size,
    require_free_space,
)

__all__ = [
    "CSI_THRESHOLD",
    "INDEX_VERSION",
    "SORT_VERSION",
    "check_sorted",
    "index_intervals",
    "query_index",
    "sort_intervals",
]

SORT_VERSION = "2"
INDEX_VERSION = "2"


def sort_intervals(
    src: str | Path,
    out_dir: str | Path,
    *,
    fmt: str,
    work_dir: str | Path,
    memory: int,
    threads: int,
    name: str,
    max_expansion: float = DEFAULT_MAX_EXPANSION,
) -> Result:
    """Sort an interval file by contig then start into ``out_dir/sorted.<suffix>.gz`` (BGZF),
    and tabix-index it there in the same step.

    Ties (same contig and start) are broken by comparing whole lines byte by byte, so the output
    equals ``LC_ALL=C sort -k1,1 -k2,2n`` of the records (``-k4,4n`` for GFF/GTF) line for line.
    Header and comment lines come first in their original order, including comment lines found
    among the records; a GFF3 ``##FASTA`` section is dropped; CRLF becomes LF; blank lines are
    dropped. bigBed is first converted to BED (``sorted.bed.gz``). The index is TBI, or CSI when
    a record ends at or beyond 2^29; :func:`index_intervals` adopts it rather than rebuilding it.

    Args:
        src: the input, plain, gzip or BGZF (detected by magic bytes), or a bigBed file.
        out_dir: existing folder that receives the output and its index.
        fmt: canonical format name: vcf, bed, narrowPeak, broadPeak, gff3, gtf or bigBed.
        work_dir: folder for GNU sort's spill files, a decompressed copy of a compressed input
            and other temporary files (created if missing; left empty).
        memory: GNU sort's buffer in bytes; Python adds a few tens of MiB of chunk buffers.
        threads: GNU sort's ``--parallel`` and the compression threads.
        name: the file's user-facing name, used in errors.
        max_expansion: the cap on decompressed bytes per byte of a compressed (or bigBed)
            input (``GENOFLOW_MAX_EXPANSION``; 0 means no cap).

    Returns:
        ``[data, index]``, record counts, and metadata: ``header_lines``, ``contigs``,
        ``records``, ``max_end``, ``needs_csi``, ``index``, ``line_skip``, ``fasta_stripped``,
        ``fasta_lines``, ``crlf_normalised``, ``blank_lines``, ``moved_comment_lines``,
        ``preset``, ``sort_path`` (``direct`` or ``streamed``), ``engine``,
        ``engine_versions`` and, for bigBed, ``converted_from``.

    Raises:
        ValueError: ``memory`` or ``threads`` is not positive.
        ProcessingError: stage ``convert``, ``decompress``, ``parse``, ``sort`` or ``index``
            (``sort`` for the expansion cap and free space); nothing is left in ``out_dir``.
    """
    if memory <= 0 or threads < 1:
        raise ValueError(f"memory and threads must be positive, got {memory} and {threads}")
    src, out_dir, work_dir = Path(src), Path(out_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tools = engine.choose("bgzip", "tabix", name=name, stage="sort")
    out = out_dir / f"sorted.{RecordReader(fmt, name=name).spec.suffix}.gz"
    indexes = [out.with_name(out.name + suffix) for suffix in (".tbi", ".csi")]
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".sort.") as folder:
        scratch = Path(folder)
        try:
            guard = ExpansionGuard(src, max_expansion, name=name, stage="sort")
            if fmt == "bigBed":
                bigbed_to_bed(src, scratch / "converted.bed", name=name, guard=guard)
            plain = scratch / "converted.bed" if fmt == "bigBed" else src
            job = SortJob(RecordReader(fmt, name=name), tools, out, scratch, memory, threads)
            stats, reader, compression = _sort(job, plain, fmt, guard)
            csi = stats.max_end >= CSI_THRESHOLD
            messages = write_index(
                out, reader.spec, line_skip=stats.line_skip, csi=csi, tools=tools,
                name=name, stage="sort", scratch=scratch,
            )  # fmt: skip
            _check_index(indexes[csi], stats, name=name)
        except BaseException:
            for path in (out, *indexes):
                path.unlink(missing_ok=True)
            raise
    metadata = _summary(stats, reader, csi=csi, compression=compression)
    if fmt == "bigBed":
        metadata["converted_from"] = "bigBed"
    if messages:
        metadata["tabix_messages"] = messages
    metadata.update(tools.metadata())
    return Result([out, indexes[csi]], stats.records, stats.records, metadata)


def _sort(
    job: SortJob, src: Path, fmt: str, guard: ExpansionGuard
) -> tuple[SortStats, RecordReader, str]:
    """Decompress into scratch if needed, then take the direct path, or the streamed one.

    Free space is checked before decompressing when the decompressed size is known (plain
    and BGZF input), else right after. Returns the stats, the reader that saw the whole file,
    and the input's compression.
    """
    compression = compression_of(src)
    expanded = {"none": src.stat().st_size, "bgzf": bgzf_expanded_size(src)}.get(compression)
    if expanded is not None:
        why = "twice its decompressed size, for a decompressed copy and sort's spill files"
        require_free_space(job.scratch, 2 * expanded, name=job.name, stage="sort", why=why)
    plain = decompress_to(
        src, job.scratch / "input", job.tools, threads=job.threads, name=job.name,
        scratch=job.scratch, guard=guard,
    )  # fmt: skip
    if expanded is None:
        why = "its decompressed size, for sort's spill files"
        need = plain.stat().st_size
        require_free_space(job.scratch, need, name=job.name, stage="sort", why=why)
    stats = sort_direct(job, plain)
    if stats is not None:
        return stats, job.reader, compression
    # The direct attempt learnt header state: the streamed path starts from a fresh reader.
    job = dataclasses.replace(job, reader=RecordReader(fmt, name=job.name))
    source = LineSource(plain, name=job.name, stage="decompress")
    # A bigBed's own header is its header: one with no records converts to no lines at all.
    return sort_streamed(job, source, empty_ok=fmt == "bigBed"), job.reader, compression


def _check_index(index: Path, stats: SortStats, *, name: str) -> None:
    """The index must hold every record read, past the same header lines.

    This is what proves that nothing was lost between the records validated and the file
    written when sort's output went straight into ``bgzip``.
    """
    line_skip, records = index_facts(index, name=name, stage="sort")
    if (line_skip, records) != (stats.line_skip, stats.records):
        raise ProcessingError(
            f"the index holds {records} records past {line_skip} header lines; "
            f"{stats.records} records were read past {stats.line_skip}",
            file=name,
            stage="sort",
            hint="check free space in the work folder and sort again",
        )


def _summary(stats: SortStats, reader: RecordReader, *, csi: bool, compression: str) -> dict:
    """The facts about one sort that :func:`sort_intervals` reports as metadata."""
    return {
        "header_lines": stats.header_lines,
        "contigs": len(reader.seen_contigs),
        "records": stats.records,
        "max_end": stats.max_end,
        "needs_csi": csi,
        "index": "csi" if csi else "tbi",
        "line_skip": stats.line_skip,
        "fasta_stripped": stats.fasta_lines > 0,
        "fasta_lines": stats.fasta_lines,
        "crlf_normalised": stats.crlf_lines > 0,
        "blank_lines": stats.blank_lines,
        "moved_comment_lines": stats.moved_lines,
        "preset": reader.spec.preset,
        "input_compression": compression,
        "sort_path": stats.path,
    }
