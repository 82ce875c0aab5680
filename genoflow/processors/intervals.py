"""Sort, BGZF-compress and tabix-index interval files: VCF, BED, narrowPeak, broadPeak, GFF3,
GTF, and bigBed (converted to BED first).

Invariant: ``out_dir`` holds either a complete output — header lines first, then every input
record in (contig, start, whole line) byte order, exactly as ``LC_ALL=C sort -k1,1 -k2,2n``
orders BED (VCF contigs follow the header's ``##contig`` order when it has one) — or nothing
this module wrote. Python holds one line at a time; GNU sort holds the records within the memory
cap and spills the rest to ``work_dir``.

Indexing, order checks and region queries of the sorted files live in
:mod:`genoflow.processors.tabix` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pysam

from genoflow.errors import ProcessingError
from genoflow.processors.base import Result
from genoflow.processors.bigbed import bigbed_to_bed
from genoflow.processors.records import HeaderSpill, LineSource, RecordReader
from genoflow.processors.tabix import CSI_THRESHOLD, check_sorted, index_intervals, query_index

__all__ = [
    "CSI_THRESHOLD",
    "INDEX_VERSION",
    "SORT_VERSION",
    "check_sorted",
    "index_intervals",
    "query_index",
    "sort_intervals",
]

SORT_VERSION = "1"
INDEX_VERSION = "1"

_CHUNK = 1 << 20
_STDERR_LIMIT = 2000
# What _feed puts before each line: contig (or its zero-padded header rank), zero-padded start.
_SORT_KEY = re.compile(rb"^[^\t\n]*\t[0-9]{20}\t", re.MULTILINE)


@dataclass
class _Stats:
    records: int = 0
    max_end: int = 0
    blank_lines: int = 0
    fasta_lines: int = 0
    header_lines: int = 0
    moved_lines: int = 0


def sort_intervals(
    src: str | Path,
    out_dir: str | Path,
    *,
    fmt: str,
    work_dir: str | Path,
    memory: int,
    threads: int,
    name: str,
) -> Result:
    """Sort an interval file by contig then start into ``out_dir/sorted.<suffix>.gz`` (BGZF).

    Ties (same contig and start) are broken by comparing whole lines byte by byte, so the output
    equals ``LC_ALL=C sort -k1,1 -k2,2n`` of the records (``-k4,4n`` for GFF/GTF) line for line.
    Header and comment lines come first in their original order, including comment lines found
    among the records; a GFF3 ``##FASTA`` section is dropped; CRLF becomes LF; blank lines are
    dropped. bigBed is first converted to BED (``sorted.bed.gz``) in ``work_dir``.

    Args:
        src: the input, plain, gzip or BGZF (detected by magic bytes), or a bigBed file.
        out_dir: existing folder that receives the output.
        fmt: canonical format name: vcf, bed, narrowPeak, broadPeak, gff3, gtf or bigBed.
        work_dir: folder for GNU sort's spill files and other temporary files (created if
            missing; the caller removes it).
        memory: GNU sort's buffer in bytes; Python adds only a few MiB of fixed buffers.
        threads: GNU sort's ``--parallel``.
        name: the file's user-facing name, used in errors.

    Returns:
        The output file, record counts, and metadata: ``header_lines``, ``contigs``,
        ``records``, ``max_end``, ``needs_csi``, ``fasta_stripped``, ``fasta_lines``,
        ``crlf_normalised``, ``blank_lines``, ``moved_comment_lines``, ``preset`` and, for
        bigBed, ``converted_from``.

    Raises:
        ProcessingError: stage ``convert``, ``decompress``, ``parse`` or ``sort``; nothing is left
            in ``out_dir``.
    """
    if memory <= 0 or threads < 1:
        raise ValueError(f"memory and threads must be positive, got {memory} and {threads}")
    src, out_dir, work_dir = Path(src), Path(out_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    reader = RecordReader(fmt, name=name)
    out = out_dir / f"sorted.{reader.spec.suffix}.gz"
    metadata: dict[str, Any] = {}
    converted = work_dir / "converted.bed"
    try:
        if fmt == "bigBed":
            bigbed_to_bed(src, converted, name=name)
            src = converted
            metadata["converted_from"] = "bigBed"
        source = LineSource(src, name=name, stage="decompress")
        stats, contigs = _sort_to(source, out, reader, work_dir, memory, threads)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        if fmt == "bigBed":
            converted.unlink(missing_ok=True)
    metadata.update(_summary(stats, contigs, source, reader))
    return Result([out], stats.records, stats.records, metadata)


def _summary(
    stats: _Stats, contigs: int, source: LineSource, reader: RecordReader
) -> dict[str, Any]:
    """The facts about one sort that :func:`sort_intervals` reports as metadata."""
    return {
        "header_lines": stats.header_lines,
        "contigs": contigs,
        "records": stats.records,
        "max_end": stats.max_end,
        "needs_csi": stats.max_end >= CSI_THRESHOLD,
        "fasta_stripped": stats.fasta_lines > 0,
        "fasta_lines": stats.fasta_lines,
        "crlf_normalised": source.crlf_lines > 0,
        "blank_lines": stats.blank_lines,
        "moved_comment_lines": stats.moved_lines,
        "preset": reader.spec.preset,
    }


def _sort_to(
    source: LineSource, out: Path, reader: RecordReader, work_dir: Path, memory: int, threads: int
) -> tuple[_Stats, int]:
    name = reader.name
    with (
        tempfile.TemporaryFile(dir=work_dir) as spill,
        _Sorter(work_dir, memory=memory, threads=threads, name=name) as sorter,
    ):
        header = HeaderSpill(spill, vcf=reader.spec.preset == "vcf")
        try:
            stats = _feed(source, reader, header, sorter.stdin)
            sorter.stdin.close()
        except BrokenPipeError as exc:
            raise sorter.failure() from exc
        if stats.records == 0:
            raise ProcessingError(
                "no records: the file holds no data lines",
                file=name,
                stage="parse",
                hint="check that the right file was listed and that it is not empty",
            )
        with pysam.BGZFile(str(out), "wb") as bgzf:
            header.write_to(bgzf)
            written = _drain(sorter.stdout, bgzf, name=name)
        sorter.wait()
    if written != stats.records:
        raise ProcessingError(
            f"sort wrote {written} records for {stats.records} read", file=name, stage="sort"
        )
    return stats, len(reader.seen_contigs)


def _feed(source: LineSource, reader: RecordReader, header: HeaderSpill, sink: IO[bytes]) -> _Stats:
    """Validate every line; header lines go to ``header``, records (with a sort key) to sort."""
    stats = _Stats()
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


def _drain(stream: IO[bytes], out: Any, *, name: str) -> int:
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


class _Sorter:
    """``LC_ALL=C sort`` as a subprocess that is always killed and reaped, with its stderr kept.

    GNU sort writes nothing before it has read all of its input, so writing stdin to the end and
    then reading stdout cannot deadlock; stderr goes to a file so it cannot block either.
    """

    def __init__(self, work_dir: Path, *, memory: int, threads: int, name: str) -> None:
        self.work_dir = work_dir
        self.argv = ["sort", "-S", f"{memory}b", "--parallel", str(threads)]
        self.name = name

    def __enter__(self) -> _Sorter:
        self._tmp = tempfile.TemporaryDirectory(dir=self.work_dir, prefix="sort-")
        self._stderr = tempfile.TemporaryFile(dir=self.work_dir)
        env = {**os.environ, "LC_ALL": "C"}
        try:
            self.proc = subprocess.Popen(
                [*self.argv, "-T", self._tmp.name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                bufsize=_CHUNK,
            )
        except OSError as exc:
            self._close_files()
            raise ProcessingError(
                f"cannot run GNU sort: {exc}", file=self.name, stage="sort"
            ) from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None  # PIPE was asked for
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        return self

    def failure(self) -> ProcessingError:
        """The error to raise when sort failed: its exit status and its own message."""
        code = self.proc.wait()
        self._stderr.seek(0)
        message = self._stderr.read(_STDERR_LIMIT).decode("utf-8", "replace").strip()
        return ProcessingError(
            f"GNU sort failed (exit status {code}): {message or 'no message'}",
            file=self.name,
            stage="sort",
            hint="check free space and permissions in the work folder",
        )

    def wait(self) -> None:
        """Wait for sort to exit; any non-zero status fails the step (pipefail semantics)."""
        if self.proc.wait() != 0:
            raise self.failure()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.stdin, self.stdout):
            # The process is gone: its status and message are reported where it failed.
            with contextlib.suppress(BrokenPipeError):
                pipe.close()
        self.proc.wait()
        self._close_files()

    def _close_files(self) -> None:
        self._stderr.close()
        self._tmp.cleanup()
