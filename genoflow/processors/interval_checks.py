"""Order checks and region queries of sorted BGZF interval files: they only read.

Invariant: nothing here writes a file; every failure to read is a
:class:`~genoflow.errors.ProcessingError` naming the file and the stage.
"""

from __future__ import annotations

from pathlib import Path

import pysam

from genoflow.errors import ProcessingError
from genoflow.processors.base import SortCheck
from genoflow.processors.records import FormatSpec, LineSource, RecordReader, show, spec_for

__all__ = ["check_sorted", "query_index"]


class OrderCheck:
    """Tracks the previous record's contig and start; says what is wrong with the next one."""

    def __init__(self, reader: RecordReader) -> None:
        self._ranks = reader.contigs
        self._seen: set[bytes] = set()
        self._contig: bytes | None = None
        self._start = 0
        self.records = 0

    def add(self, contig: bytes, start: int) -> str | None:
        self.records += 1
        previous, self._contig = self._contig, contig
        if contig == previous:
            before, self._start = self._start, start
            if start < before:
                return f"{show(contig)}:{start} after {show(contig)}:{before}"
            return None
        self._start = start
        if contig in self._seen:
            return f"contig {show(contig)} appears again after {show(previous)}"
        self._seen.add(contig)
        if previous is not None and self._key(contig) < self._key(previous):
            return f"contig {show(contig)} after {show(previous)}"
        return None

    def _key(self, contig: bytes) -> tuple[int, bytes]:
        return (self._ranks.get(contig, len(self._ranks)), contig)


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
