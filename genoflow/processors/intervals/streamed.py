"""The general way to sort an interval file: Python reads every line and keys it for GNU sort.

Invariant: whatever the file holds — comment lines among the records, CRLF line ends, blank
lines, a GFF3 ``##FASTA`` section — header and comment lines come out first in their original
order, then every record in (contig or its ``##contig`` rank, start, whole line) byte order.
Python holds one line at a time; GNU sort holds the records within the memory cap and spills the
rest to the scratch folder. It is the reference the direct path must match byte for byte.
"""

from __future__ import annotations

import re
import tempfile
from subprocess import PIPE
from typing import IO

from genoflow.core.errors import ProcessingError
from genoflow.processors.intervals.bgzf import Sink
from genoflow.processors.intervals.records import HeaderSpill, LineSource, RecordReader
from genoflow.processors.intervals.sortjob import SortJob, SortStats

__all__ = ["sort_streamed"]

_CHUNK = 1 << 20
# What _feed puts before each line: contig (or its zero-padded header rank), zero-padded start.
_SORT_KEY = re.compile(rb"^[^\t\n]*\t[0-9]{20}\t", re.MULTILINE)


def sort_streamed(job: SortJob, source: LineSource, *, empty_ok: bool = False) -> SortStats:
    """Sort every line of ``source`` into ``job.out``.

    A file with header lines and no records is valid (a VCF with no calls is a real outcome):
    its header is written, and the index holds no records. A file with neither is refused,
    unless ``empty_ok`` (the header lives elsewhere, as a bigBed's does).

    Raises:
        ProcessingError: stage ``decompress``, ``parse`` or ``sort``; ``job.out`` is not left
            behind.
    """
    reader = job.reader
    name = job.name
    with (
        tempfile.TemporaryFile(dir=job.scratch) as spill,
        job.gnu_sort([], stdin=PIPE, stdout=PIPE) as sorter,
    ):
        header = HeaderSpill(spill, vcf=reader.spec.preset == "vcf")
        try:
            stats = _feed(source, reader, header, sorter.stdin)
            sorter.stdin.close()
        except BrokenPipeError as exc:
            raise sorter.failure() from exc
        if stats.records == 0 and stats.header_lines == 0 and not empty_ok:
            raise ProcessingError(
                "no records and no header lines: the file holds nothing to sort",
                file=name,
                stage="parse",
                hint="check that the right file was listed and that it is not empty",
            )
        with job.sink() as sink:
            header.write_to(sink)
            written = _drain(sorter.stdout, sink, name=name)
            sorter.finish()
    if written != stats.records:
        raise ProcessingError(
            f"sort wrote {written} records for {stats.records} read", file=name, stage="sort"
        )
    stats.line_skip, stats.crlf_lines = header.line_skip, source.crlf_lines
    return stats


def _feed(
    source: LineSource, reader: RecordReader, header: HeaderSpill, sink: IO[bytes]
) -> SortStats:
    """Validate every line; header lines go to ``header``, records (with a sort key) to sort."""
    stats = SortStats("streamed")
    ranks = reader.contigs
    lines = iter(source)
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        if reader.is_header(line):
            if reader.is_fasta_start(line):
                stats.fasta_lines = 1 + sum(1 for _ in lines)
                break
            reader.observe_header(lineno, line)
            header.add(line)
            stats.header_lines += 1
            stats.moved_lines += stats.records > 0
        elif not line:
            stats.blank_lines += 1
        else:
            contig, start, end = reader.parse(lineno, line)
            # The key sorts by plain byte comparison: contig (or its header rank), then the
            # zero-padded start, then the whole line as the last-resort tie-break.
            key = b"%010d" % ranks[contig] if ranks else contig
            sink.write(b"%b\t%020d\t%b\n" % (key, start, line))
            stats.records += 1
            stats.max_end = max(stats.max_end, end)
    if reader.spec.preset == "vcf" and not reader.saw_chrom_line:
        raise reader.error(lineno, "no #CHROM header line before the end of the file")
    return stats


def _drain(stream: IO[bytes], out: Sink, *, name: str) -> int:
    """Copy sort's output without its keys, a chunk at a time; return the records written."""
    records = 0
    tail = b""
    while chunk := stream.read(_CHUNK):
        chunk = tail + chunk
        cut = chunk.rfind(b"\n") + 1
        chunk, tail = chunk[:cut], chunk[cut:]
        stripped, keys = _SORT_KEY.subn(b"", chunk)
        if keys != chunk.count(b"\n"):
            raise ProcessingError("sort output lost its keys", file=name, stage="sort")
        out.write(stripped)
        records += keys
    if tail:
        raise ProcessingError("sort output ends without a newline", file=name, stage="sort")
    return records
