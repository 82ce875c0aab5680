"""Order checks and region queries of sorted BGZF interval files: they only read.

Invariant: nothing here writes a file; every failure to read is a
:class:`~genoflow.core.errors.ProcessingError` naming the file and the stage. A region query names
its contig through :func:`contig_region`, never raw: contig names may hold ``:`` and ``-``
(``chr1:100-200``, ``HLA-A*01:01:01:01``), which htslib would otherwise read as a range.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.processors.base import SortCheck
from genoflow.processors.intervals.bgzf import compression_of, require_eof
from genoflow.processors.intervals.chunks import (
    ChunkValidator,
    Irregular,
    OutOfOrder,
    read_chunks,
    scan_header,
    worth_vectorising,
)
from genoflow.processors.intervals.order import OrderCheck
from genoflow.processors.intervals.records import FormatSpec, LineSource, RecordReader, spec_for

__all__ = ["check_sorted", "contig_region", "query_index"]


def check_sorted(gz: str | Path, *, fmt: str, name: str) -> SortCheck:
    """Re-read a sorted output and prove its order.

    Contig blocks must be contiguous and in the expected order (the VCF header's ``##contig`` order
    when it has one, else byte order); starts must not decrease within a contig. Large files are
    checked a chunk at a time (see :mod:`~genoflow.processors.intervals.chunks`); the answer is the
    one a line-by-line reading gives.

    Args:
        gz: a file written by :func:`sort_intervals` (or any BGZF/gzip/plain file of ``fmt``).
        fmt: the canonical format name.
        name: the file's user-facing name, used in errors.

    Returns:
        The records read and, on the first violation or unreadable record, where and what.

    Raises:
        ProcessingError: stage ``check``, when the file cannot be decompressed.
    """
    gz = Path(gz)
    compression = compression_of(gz)
    if compression == "bgzf":
        require_eof(gz, name=name, stage="check")
    reader = RecordReader(fmt, name=name, stage="check")
    order = OrderCheck(reader)
    validator = ChunkValidator(reader, vectorised=worth_vectorising(gz.stat().st_size), order=order)
    try:
        with _open(gz, compression, name) as handle:
            first = scan_header(handle, reader, reader.observe_header)
            if first is None:
                return SortCheck(0, True)
            chunks = read_chunks(handle, prefix=first[0], first=first[1], name=name, stage="check")
            for chunk, lineno, lines in chunks:
                try:
                    validator.feed(chunk, lineno, lines)
                except ProcessingError as exc:  # a record that does not parse: not sorted
                    return SortCheck(order.records, False, exc.message)
    except OutOfOrder as exc:
        return SortCheck(order.records, False, str(exc))
    except Irregular as exc:
        if exc.what == "header" and order.records:
            return SortCheck(order.records, False, f"line {exc.lineno}: header line after records")
        return _check_lines(gz, fmt=fmt, name=name)
    return SortCheck(order.records, True)


@contextlib.contextmanager
def _open(gz: Path, compression: str, name: str) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed in this process (a check writes no scratch files)."""
    if compression == "none":
        with open(gz, "rb") as handle:
            yield handle
        return
    try:
        with gzip.open(gz, "rb") as handle:
            yield handle
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        hint = "the file is incomplete or corrupt: download or regenerate it"
        raise ProcessingError(
            f"cannot decompress: {exc}", file=name, stage="check", hint=hint
        ) from exc


def _check_lines(gz: Path, *, fmt: str, name: str) -> SortCheck:
    """The line-by-line check, for files with blank, CRLF or misplaced header lines."""
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
            return {
                contig: sum(1 for _ in tabix.fetch(region=contig_region(contig, name=name)))
                for contig in tabix.contigs
            }
    except (OSError, ValueError) as exc:
        raise ProcessingError(f"region query failed: {exc}", file=name, stage="query") from exc


def contig_region(contig: str, *, name: str) -> str:
    """The htslib region string that means the whole of ``contig``, whatever its name holds.

    htslib reads ``chr1:100-200`` as a range of ``chr1`` when both names exist ("Range is
    ambiguous"); ``{chr1:100-200}`` always means the contig. A name holding ``}`` cannot go in
    braces: ``name:1-`` (from its first base to its end) names it instead.

    Args:
        contig: the contig's name, exactly as the index lists it.
        name: the file's user-facing name, used in errors.

    Raises:
        ProcessingError: stage ``query``, for a name that starts with ``{`` and holds ``}``,
            which no region string can name.
    """
    if "}" not in contig:
        return f"{{{contig}}}"
    if not contig.startswith("{"):
        return f"{contig}:1-"
    raise ProcessingError(
        f"contig {contig!r} cannot be named in a region query (it starts with '{{' and holds '}}')",
        file=name,
        stage="query",
        hint="rename the contig without braces and run again",
    )


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
