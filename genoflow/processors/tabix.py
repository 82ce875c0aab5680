"""Tabix-index, order-check and region-query the sorted BGZF interval files.

Invariant: :func:`index_intervals` leaves in ``out_dir`` either the data file together with its
complete index (TBI, or CSI once any record ends at or beyond 2^29) or nothing it wrote; the
index is built only after every record of the data file has been read and validated.
:func:`check_sorted` and :func:`query_index` only read.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import pysam

from genoflow.errors import ProcessingError
from genoflow.processors.base import Result, SortCheck, link_or_copy, require_output
from genoflow.processors.records import (
    FormatSpec,
    LineSource,
    OrderCheck,
    RecordReader,
    is_bgzf,
    spec_for,
)

__all__ = ["CSI_THRESHOLD", "check_sorted", "index_intervals", "query_index"]

CSI_THRESHOLD = 1 << 29
"""TBI cannot hold a position at or beyond 2^29: such files get a CSI index."""

_LOG_LIMIT = 2000  # bytes of htslib's log kept for an error message


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
    return log.read(_LOG_LIMIT).decode("utf-8", "replace").strip()


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
