"""Sort, BGZF-compress and tabix-index interval files: VCF, BED, narrowPeak, broadPeak, GFF3,
GTF, and bigBed (converted to BED first).

Invariant: ``out_dir`` holds either a complete output — header lines first, then every input
record in (contig, start, whole line) byte order, exactly as ``LC_ALL=C sort -k1,1 -k2,2n``
orders BED (VCF contigs follow the header's ``##contig`` order when it has one) — or nothing
this module wrote. Python holds one line at a time; GNU sort holds the records within the memory
cap and spills the rest to ``work_dir``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import pysam

from genoflow.errors import ProcessingError
from genoflow.processors.base import Result, SortCheck, link_or_copy, require_output
from genoflow.processors.bigbed import bigbed_to_bed
from genoflow.processors.records import (
    FormatSpec,
    HeaderSpill,
    LineSource,
    OrderCheck,
    RecordReader,
    is_bgzf,
    spec_for,
)

SORT_VERSION = "1"
INDEX_VERSION = "1"
CSI_THRESHOLD = 1 << 29

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
    metadata.update(
        header_lines=stats.header_lines,
        contigs=contigs,
        records=stats.records,
        max_end=stats.max_end,
        needs_csi=stats.max_end >= CSI_THRESHOLD,
        fasta_stripped=stats.fasta_lines > 0,
        fasta_lines=stats.fasta_lines,
        crlf_normalised=source.crlf_lines > 0,
        blank_lines=stats.blank_lines,
        moved_comment_lines=stats.moved_lines,
        preset=reader.spec.preset,
    )
    return Result([out], stats.records, stats.records, metadata)


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


def index_intervals(gz: str | Path, out_dir: str | Path, *, fmt: str, name: str) -> Result:
    """Copy (or hard-link) a sorted BGZF file into ``out_dir`` and tabix-index it there.

    The index is TBI, or CSI when any record ends at or beyond 2^29 (TBI's limit). The kind and
    the number of leading non-``#`` header lines to skip (BED ``track``/``browser`` lines) are
    derived from the file itself in one streaming pass, which also validates every record.

    Args:
        gz: a BGZF file written by :func:`sort_intervals`.
        out_dir: existing folder that receives ``gz``'s copy and its ``.tbi`` or ``.csi``.
        fmt: the canonical format name ``gz`` was sorted as.
        name: the file's user-facing name, used in errors.

    Returns:
        Files ``[data, index]`` and metadata ``index`` (tbi/csi), ``preset``, ``line_skip``.

    Raises:
        ProcessingError: stage ``index``; nothing is left in ``out_dir``.
    """
    gz, out_dir = Path(gz), Path(out_dir)
    reader = RecordReader(fmt, name=name, stage="index")
    data = out_dir / gz.name
    if data.exists() and data.samefile(gz):
        raise ValueError(f"{gz} is already in {out_dir}: index into another folder")
    try:
        line_skip, records, max_end = _scan_for_index(gz, reader)
        csi = max_end >= CSI_THRESHOLD
        link_or_copy(gz, data)
        index = data.with_name(data.name + (".csi" if csi else ".tbi"))
        messages = _build_index(data, reader.spec, line_skip=line_skip, csi=csi, name=name)
        require_output(index, name=name, stage="index")
    except BaseException:
        for path in (data, data.with_name(data.name + ".tbi"), data.with_name(data.name + ".csi")):
            path.unlink(missing_ok=True)
        raise
    metadata: dict[str, Any] = {
        "index": "csi" if csi else "tbi",
        "preset": reader.spec.preset,
        "line_skip": line_skip,
    }
    if messages:
        metadata["tabix_messages"] = messages
    return Result([data, index], records, records, metadata)


def _scan_for_index(gz: Path, reader: RecordReader) -> tuple[int, int, int]:
    """Return (line_skip, records, max_end): tabix skips ``#`` lines but not track/browser."""
    with open(gz, "rb") as probe:
        if not is_bgzf(probe.read(16)):
            hint = "index the output of sort_intervals, which is BGZF"
            raise ProcessingError("not BGZF-compressed", file=reader.name, stage="index", hint=hint)
    line_skip = records = max_end = 0
    for lineno, line in enumerate(LineSource(gz, name=reader.name, stage="index"), 1):
        if reader.is_header(line):
            if records:
                raise reader.error(lineno, "header line after the records: sort the file first")
            reader.observe_header(lineno, line)
            if line[:1] != b"#":
                line_skip = lineno
            continue
        records += 1
        max_end = max(max_end, reader.parse(lineno, line)[2])
    return line_skip, records, max_end


def _build_index(data: Path, spec: FormatSpec, *, line_skip: int, csi: bool, name: str) -> str:
    """Run htslib's tabix indexer, turning its stderr into the error message or the result."""
    if spec.preset == "vcf":
        layout: dict[str, Any] = {"preset": "vcf"}
    else:
        # pysam ignores line_skip whenever a preset is given: pass the preset's own layout.
        layout = {
            "seq_col": 0,
            "start_col": spec.start_col,
            "end_col": spec.end_col,
            "zerobased": spec.preset == "bed",
            "line_skip": line_skip,
        }
    with tempfile.TemporaryFile(dir=data.parent) as log:
        try:
            with _stderr_to(log):
                pysam.tabix_index(str(data), force=True, keep_original=True, csi=csi, **layout)
        except OSError as exc:
            reason = _read_log(log) or str(exc)
            raise ProcessingError(
                f"tabix indexing failed: {reason}", file=name, stage="index"
            ) from exc
        return _read_log(log)


class _stderr_to:  # lower case: it reads as a function, ``with _stderr_to(log):``
    """Point file descriptor 2 at ``log`` (htslib writes its reasons there, not to Python).

    The redirection is process-wide: it must not overlap with other threads' htslib calls.
    """

    def __init__(self, log: BinaryIO) -> None:
        self._log = log

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._log.fileno(), 2)

    def __exit__(self, *exc_info: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _read_log(log: BinaryIO) -> str:
    log.seek(0)
    return log.read(_STDERR_LIMIT).decode("utf-8", "replace").strip()


def check_sorted(gz: str | Path, *, fmt: str, name: str) -> SortCheck:
    """Re-read a sorted output and prove its order.

    Contig blocks must be contiguous and in the expected order (the VCF header's ``##contig``
    order when it has one, else byte order); starts must not decrease within a contig.

    Args:
        gz: a file written by :func:`sort_intervals` (or any BGZF/gzip/plain file of ``fmt``).
        fmt: the canonical format name.
        name: the file's user-facing name, used in errors.

    Returns:
        The records read and, on the first violation or unreadable record, where and what.

    Raises:
        ProcessingError: stage ``check``, when the file cannot be decompressed.
    """
    reader = RecordReader(fmt, name=name, stage="check")
    order = OrderCheck(reader)
    for lineno, line in enumerate(LineSource(gz, name=name, stage="check"), 1):
        if reader.is_header(line):
            if order.records:
                return SortCheck(order.records, False, f"line {lineno}: header line after records")
            reader.observe_header(lineno, line)
            continue
        try:
            problem = order.add(*reader.parse(lineno, line)[:2])
        except ProcessingError as exc:
            return SortCheck(order.records, False, exc.message)
        if problem:
            return SortCheck(order.records, False, f"line {lineno}: {problem}")
    return SortCheck(order.records, True)


def query_index(folder_or_gz: str | Path, *, fmt: str, name: str) -> dict[str, int]:
    """Count, through the index, the records of every contig the index lists.

    Args:
        folder_or_gz: an indexed BGZF file, or the folder :func:`index_intervals` wrote it to.
        fmt: the canonical format name (picks ``*.<suffix>.gz`` in a folder).
        name: the file's user-facing name, used in errors.

    Returns:
        Contig name → records returned by a region query for that contig.

    Raises:
        ProcessingError: stage ``query``, when there is no index or a query fails.
    """
    gz = _indexed_file(Path(folder_or_gz), spec_for(fmt, name=name), name)
    index = next(p for p in (Path(f"{gz}.csi"), Path(f"{gz}.tbi")) if p.exists())
    try:
        # latin-1 decodes any byte: only the number of records matters here.
        with pysam.TabixFile(str(gz), index=str(index), encoding="latin-1") as tabix:
            return {contig: sum(1 for _ in tabix.fetch(contig)) for contig in tabix.contigs}
    except (OSError, ValueError) as exc:
        raise ProcessingError(f"region query failed: {exc}", file=name, stage="query") from exc


def _indexed_file(path: Path, spec: FormatSpec, name: str) -> Path:
    candidates = sorted(path.glob(f"*.{spec.suffix}.gz")) if path.is_dir() else [path]
    indexed = [p for p in candidates if any(Path(f"{p}{s}").exists() for s in (".tbi", ".csi"))]
    if len(indexed) != 1:
        raise ProcessingError(
            f"expected one indexed *.{spec.suffix}.gz at {path}, found {len(indexed)}",
            file=name,
            stage="query",
            hint="index the file first (index_intervals)",
        )
    return indexed[0]
