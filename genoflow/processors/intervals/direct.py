"""The fast way to sort an interval file: GNU sort reads the records straight from the file.

Invariant: the output is byte for byte what :mod:`genoflow.processors.intervals.streamed` writes for
the same input. This path only takes files whose header lines all come first and whose records are
plain lines (no comment, blank or CRLF line among them, no GFF3 ``##FASTA`` section); on the first
line that breaks that, it stops GNU sort and returns None so the caller takes the streamed path.
Meanwhile Python validates every record, a chunk at a time, as GNU sort reads the same bytes on its
own, so validation costs CPU time but little wall time; any invalid record stops everything with the
same error the streamed path would raise.

GNU sort orders records by ``-t TAB -k1,1 -k<start>,<start>n`` with its whole-line tie-break,
which is the streamed path's (contig, start, line) byte order. A VCF whose ``##contig`` order
is not byte order is sorted the same way, and its contig blocks (each contiguous in sort's
output, each as long as the validator counted) are put in header order as they stream by
(:mod:`~genoflow.processors.intervals.reorder`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from typing import BinaryIO, NamedTuple

from genoflow.core.errors import ProcessingError
from genoflow.processors.commands import Child, pump, write_all
from genoflow.processors.intervals.bgzf import Sink
from genoflow.processors.intervals.chunks import (
    ChunkValidator,
    Irregular,
    read_chunks,
    scan_header,
    worth_vectorising,
)
from genoflow.processors.intervals.records import HeaderSpill, RecordReader
from genoflow.processors.intervals.reorder import reorder_blocks
from genoflow.processors.intervals.sortjob import SortJob, SortStats

__all__ = ["sort_direct"]


def sort_direct(job: SortJob, plain: Path) -> SortStats | None:
    """Sort the uncompressed file ``plain`` into ``job.out``, or return None to decline it.

    Raises:
        ProcessingError: a header line or record is invalid, or a tool failed; ``job.out`` is
            not left behind.
    """
    reader = job.reader
    with (
        tempfile.TemporaryFile(dir=job.scratch) as spill,
        open(plain, "rb") as handle,
    ):
        header = HeaderSpill(spill, vcf=reader.spec.preset == "vcf")
        try:
            first = scan_header(
                handle, reader, lambda n, line: _header_line(reader, header, n, line)
            )
        except Irregular:
            return None
        if first is None:
            return None
        raw, lineno = first
        offset = handle.tell() - len(raw)
        sizable = worth_vectorising(plain.stat().st_size - offset)
        reordered = not _byte_ordered(reader)
        validator = ChunkValidator(reader, vectorised=sizable, sizes=reordered)
        stats = SortStats("direct", header_lines=lineno - 1, line_skip=header.line_skip)
        start = reader.spec.start_col + 1
        keys = ["-t", "\t", "-k1,1", f"-k{start},{start}n"]
        chunks = read_chunks(handle, prefix=raw, first=lineno, name=job.name, stage="parse")
        with open(plain, "rb") as records:
            records.seek(offset)
            # Nothing counts the lines written: sort_intervals checks the index's record count.
            if job.tools.cli:
                sorting = _Sorting(job, records, keys, reordered=reordered)
                if not _sort_into_bgzip(sorting, header, validator, chunks):
                    return None
            else:
                with job.gnu_sort(keys, stdin=records, stdout=PIPE) as sorter:
                    if not _validate(validator, chunks):
                        return None
                    _write(job, header, sorter, validator)
    stats.records, stats.max_end = validator.records, validator.max_end
    return stats


def _validate(validator: ChunkValidator, chunks: Iterator[tuple[bytes, int, int]]) -> bool:
    """Feed every chunk to the validator; False at the first irregular line."""
    try:
        for chunk, number, lines in chunks:
            validator.feed(chunk, number, lines)
    except Irregular:
        return False
    return True


def _byte_ordered(reader: RecordReader) -> bool:
    """Whether sort's byte order of contigs is the output's whatever contigs the records name."""
    order = sorted(reader.contigs, key=reader.contigs.__getitem__)
    return order == sorted(order)


class _Sorting(NamedTuple):
    """What :func:`_sort_into_bgzip` runs GNU sort on, and whether its contig blocks move."""

    job: SortJob
    records: BinaryIO
    keys: list[str]
    reordered: bool


def _sort_into_bgzip(
    sorting: _Sorting,
    header: HeaderSpill,
    validator: ChunkValidator,
    chunks: Iterator[tuple[bytes, int, int]],
) -> bool:
    """Header, then GNU sort's output into ``bgzip`` without Python reading it.

    ``bgzip`` starts first and gets the header lines on its stdin; only then does sort start,
    writing into the same pipe when its byte order is the output's, so the header's bytes come
    first. Otherwise sort's contig blocks are spliced into that pipe in header order. ``bgzip``
    cuts blocks by input size alone, so the bytes equal those of the copying path. Returns
    False (with ``job.out`` removed) at the first irregular line.
    """
    job = sorting.job
    argv = [job.tools.paths["bgzip"], "-@", str(job.threads), "-c"]
    common = {"name": job.name, "stage": "sort", "scratch": job.scratch}
    try:
        with (
            open(job.out, "wb") as file,
            Child(argv, what="bgzip", stdin=PIPE, stdout=file, **common) as zipper,
        ):
            header.write_to(_PipeWriter(zipper))
            into = PIPE if sorting.reordered else zipper.stdin
            with job.gnu_sort(sorting.keys, stdin=sorting.records, stdout=into) as sorter:
                if not sorting.reordered:
                    zipper.stdin.close()  # sort holds the pipe now: bgzip ends when sort does
                if not _validate(validator, chunks):
                    job.out.unlink(missing_ok=True)
                    return False
                if sorting.reordered:
                    try:
                        _reorder(job, validator, sorter, zipper.stdin.fileno())
                    except BrokenPipeError as exc:
                        raise zipper.failure() from exc
                    zipper.stdin.close()
                sorted_ok = sorter.proc.wait() == 0
                if not sorted_ok and zipper.failed():
                    raise zipper.failure()  # bgzip died first: its reason explains sort's
                sorter.finish()
            zipper.finish()
    except BaseException:
        job.out.unlink(missing_ok=True)
        raise
    return True


def _reorder(job: SortJob, validator: ChunkValidator, sorter: Child, sink: int | Sink) -> None:
    """Sort's output into ``sink`` (a pipe's write end, or a sink) in header contig order."""
    assert validator.sizes is not None, "the validator was not counting contig sizes"
    order = sorted(validator.sizes, key=validator.reader.contigs.__getitem__)
    with tempfile.TemporaryFile(dir=job.scratch) as spill:
        try:
            reorder_blocks(sorter.stdout.fileno(), validator.sizes, order, sink, spill.fileno())
        except ValueError as exc:
            sorter.finish()  # a sort that failed explains the garbled output best
            raise ProcessingError(str(exc), file=job.name, stage="sort") from exc


class _PipeWriter:
    """Writes header lines to a tool's stdin; a tool that died reports its own failure."""

    def __init__(self, child: Child) -> None:
        self._child = child

    def write(self, data: bytes) -> None:
        try:
            write_all(self._child.stdin.fileno(), data)
        except BrokenPipeError as exc:
            raise self._child.failure() from exc


def _header_line(reader: RecordReader, header: HeaderSpill, lineno: int, line: bytes) -> None:
    if reader.is_fasta_start(line):
        raise Irregular(lineno, "fasta")
    reader.observe_header(lineno, line)
    header.add(line)


def _write(job: SortJob, header: HeaderSpill, sorter: Child, validator: ChunkValidator) -> None:
    """Header, then sort's output (with its contig blocks in header order) into the BGZF sink.

    Lines are not counted here: sort_intervals checks the count the index holds.
    """
    with job.sink() as sink:
        header.write_to(sink)
        if validator.sizes is None:
            pump(sorter.stdout, sink.write, count=False)
        else:
            _reorder(job, validator, sorter, sink)
        sorter.finish()
