"""Validate the records of an interval file a chunk of whole lines at a time.

Invariant: :meth:`ChunkValidator.feed` accepts a chunk exactly when validating its lines one by
one with :class:`~genoflow.processors.records.RecordReader` would, and raises the same error for
the same first bad line; it raises :class:`Irregular` at the first line that is not a plain
record (a header, comment, blank or CRLF line), which is not an error but something a caller
streaming records straight into ``sort`` cannot place.

Large chunks are parsed by pandas' C tokenizer. It reads numbers leniently (``" 5"``, ``"+5"``,
``"5.0"``, ``"1e3"``), so the chunk is first put through a byte permutation that turns every
character such leniency relies on into a byte no number parser accepts, and chunks that already
hold one of those bytes are left to the line-by-line path. Whenever pandas cannot vouch for a
chunk, the chunk is validated line by line, which also finds the error and its line number.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from genoflow.errors import ProcessingError
from genoflow.processors.order import OrderCheck
from genoflow.processors.records import MAX_LINE, RecordReader, vcf_end

__all__ = [
    "VECTORISE_ABOVE",
    "ChunkValidator",
    "Irregular",
    "OutOfOrder",
    "read_chunks",
    "scan_header",
    "worth_vectorising",
]

CHUNK = 4 << 20
VECTORISE_ABOVE = 16 << 20
"""Data regions smaller than this are validated line by line: importing pandas costs more."""
MIN_FRAME = CHUNK // 4
"""Chunks smaller than this (a file's last) are validated line by line."""

_LENIENT = b" +-.eE\x0b\x0c\r"
_STAND_INS = bytes(range(0x80, 0x80 + len(_LENIENT)))
_SWAP = bytes.maketrans(_LENIENT + _STAND_INS, _STAND_INS + _LENIENT)
_END_LINE = re.compile(rb"[^\n]*END=[^\n]*")
# Bytes that make a chunk the line-by-line path's: CR, NUL, and the permutation's stand-ins.
_UNTRUSTED = [b"\r", b"\x00", *(bytes([b]) for b in _STAND_INS)]


class Irregular(Exception):
    """A line that is valid but not a plain record: the caller must take the general path.

    Attributes:
        lineno: its line number.
        what: ``blank``, ``crlf`` or ``header``.
    """

    def __init__(self, lineno: int, what: str) -> None:
        super().__init__(f"line {lineno}: {what}")
        self.lineno = lineno
        self.what = what


class OutOfOrder(Exception):
    """A record out of sorted order (raised only when the validator was given an order check).

    Attributes:
        lineno: its line number.
        problem: what is wrong, as :meth:`OrderCheck.add` says it.
    """

    def __init__(self, lineno: int, problem: str) -> None:
        super().__init__(f"line {lineno}: {problem}")
        self.lineno = lineno
        self.problem = problem


class ChunkValidator:
    """Validates chunks of record lines, in file order, and keeps count of what it saw.

    Args:
        reader: the file's reader, already past its header lines (it holds the VCF contig
            order and ``#CHROM`` state, and learns each record contig as it is validated).
        vectorised: whether to try pandas on large chunks.
        order: when given, every record must also keep sorted order (:class:`OutOfOrder`).
    """

    def __init__(
        self, reader: RecordReader, *, vectorised: bool, order: OrderCheck | None = None
    ) -> None:
        self.reader = reader
        self.records = 0
        self.max_end = 0
        self._vectorised = vectorised
        self._order = order
        self._columns = _columns(reader.spec)

    def feed(self, chunk: bytes, first: int, lines: int) -> None:
        """Validate ``chunk`` (whole lines; only the file's last may lack its newline).

        Args:
            chunk: the lines.
            first: the line number of the chunk's first line.
            lines: how many lines the chunk holds.

        Raises:
            ProcessingError: a record is invalid (the first one, with its line number).
            Irregular: a line is a header, comment, blank or CRLF line.
            OutOfOrder: with an order check, a record is out of order.
        """
        if not chunk:
            return
        if self._vectorised and len(chunk) >= MIN_FRAME and self._try_frame(chunk, first, lines):
            return
        self._lines(chunk, first)

    def _lines(self, chunk: bytes, first: int) -> None:
        reader = self.reader
        lines = chunk.split(b"\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        max_end = self.max_end
        for lineno, line in enumerate(lines, first):
            if not line:
                raise Irregular(lineno, "blank")
            if line[-1:] == b"\r":
                raise Irregular(lineno, "crlf")
            if reader.is_header(line):
                raise Irregular(lineno, "header")
            contig, start, end = reader.parse(lineno, line)
            max_end = max(max_end, end)
            if self._order is not None and (problem := self._order.add(contig, start)):
                raise OutOfOrder(lineno, problem)
        self.records += len(lines)
        self.max_end = max_end

    def _try_frame(self, chunk: bytes, first: int, rows: int) -> bool:
        """Validate the chunk with pandas; False when it cannot vouch for every line.

        A blank line, or a header line, reaches pandas as a row whose numbers do not parse or
        whose "contig" is a header line's start; a CR is looked for, as it would hide in a
        column pandas does not read.
        """
        if any(byte in chunk for byte in _UNTRUSTED):
            return False
        try:
            frame = _parse(chunk.translate(_SWAP), self._columns)
        except (ValueError, OverflowError, TypeError):
            return False
        names = self._contigs_valid(frame[0], first) if len(frame) == rows else None
        if names is None:
            return False
        spec = self.reader.spec
        starts = frame[spec.start_col].to_numpy()
        if starts.min() < spec.min_start:
            return False
        if spec.end_col is not None:
            ends = frame[spec.end_col].to_numpy()
            if (ends < starts).any():
                return False
            end = int(ends.max())
        else:
            end = self._vcf_max_end(chunk, starts, frame[3])
        last = spec.min_columns - 1
        if last not in (spec.start_col, spec.end_col) and "" in frame[last].cat.categories:
            return False
        codes = frame[0].cat.codes.to_numpy()
        if self._order is not None and not self._order.add_block(codes, names, starts):
            return False
        self.records += rows
        self.max_end = max(self.max_end, end)
        return True

    def _contigs_valid(self, column: Any, first: int) -> list[bytes] | None:
        """Check each contig new to the reader once, at the line that first names it.

        Returns:
            The column's categories as contig names, or None when one is not valid.
        """
        names = [c.encode("latin-1").translate(_SWAP) for c in column.cat.categories]
        if any(not name or self.reader.is_header(name) for name in names):
            return None
        new = [i for i, contig in enumerate(names) if contig not in self.reader.seen_contigs]
        if not new:
            return names
        codes = column.cat.codes.to_numpy()
        found, rows = np.unique(codes, return_index=True)
        row_of = dict(zip(found.tolist(), rows.tolist(), strict=True))
        try:
            for i in sorted(new, key=row_of.__getitem__):
                self.reader.check_contig(first + row_of[i], names[i])
        except ProcessingError:
            return None
        return names

    def _vcf_max_end(self, chunk: bytes, starts: np.ndarray, ref: Any) -> int:
        """VCF ends come from REF's length, or from INFO ``END=`` on the lines that carry it."""
        lengths = np.array([len(r) for r in ref.cat.categories], dtype=np.int64)
        end = int((starts - 1 + lengths[ref.cat.codes.to_numpy()]).max())
        if b"END=" in chunk:
            for match in _END_LINE.finditer(chunk):
                fields = match.group().split(b"\t", 8)
                end = max(end, vcf_end(int(fields[1]), fields))
        return end


def worth_vectorising(size: int) -> bool:
    """Whether ``size`` bytes of records are worth pandas' start-up cost."""
    return size >= VECTORISE_ABOVE


def _columns(spec: Any) -> dict[int, str]:
    """The columns pandas reads, and how: contig, positions, REF and the last required one."""
    columns = {0: "category", spec.start_col: "int64"}
    if spec.end_col is not None:
        columns[spec.end_col] = "int64"
    else:
        columns[3] = "category"
    columns.setdefault(spec.min_columns - 1, "category")
    return dict(sorted(columns.items()))


def _parse(data: bytes, columns: dict[int, str]) -> Any:
    import pandas as pd

    # A value such as "nan" that cannot become an integer raises ValueError (and the chunk goes
    # line by line); numpy's accompanying "invalid value in cast" warning says nothing more.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return pd.read_csv(
            io.BytesIO(data),
            sep="\t",
            header=None,
            usecols=list(columns),
            dtype=columns,
            engine="c",
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            encoding="latin-1",
            lineterminator="\n",
            skip_blank_lines=False,
            low_memory=False,
        )


def scan_header(
    handle: BinaryIO, reader: RecordReader, on_header: Callable[[int, bytes], None]
) -> tuple[bytes, int] | None:
    """Read a file's leading header lines, handing each to ``on_header(lineno, line)``.

    Returns:
        The first record line (as read, newline included) and its line number, or None when
        the file holds nothing but header lines.

    Raises:
        Irregular: a blank, CRLF or overlong line comes before the first record.
    """
    lineno = 0
    while raw := handle.readline(MAX_LINE):
        lineno += 1
        line = raw[:-1] if raw[-1:] == b"\n" else raw
        if len(raw) == MAX_LINE and line is raw:
            raise Irregular(lineno, "long")
        if not line:
            raise Irregular(lineno, "blank")
        if line[-1:] == b"\r":
            raise Irregular(lineno, "crlf")
        if not reader.is_header(line):
            return raw, lineno
        on_header(lineno, line)
    return None


def read_chunks(
    handle: BinaryIO, *, prefix: bytes, first: int, name: str, stage: str
) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(chunk, first line number, lines)``: whole lines of ``prefix`` and then ``handle``.

    Raises:
        ProcessingError: a line is longer than the longest line the readers accept.
    """
    tail = prefix
    while block := handle.read(CHUNK):
        block = tail + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            if len(block) > MAX_LINE:
                what = f"a line is longer than {MAX_LINE} bytes"
                hint = "the file is incomplete or corrupt: download or regenerate it"
                raise ProcessingError(what, file=name, stage=stage, hint=hint)
            tail = block
            continue
        chunk, tail = block[:cut], block[cut:]
        lines = chunk.count(b"\n")
        yield chunk, first, lines
        first += lines
    if tail:
        yield tail, first, 1
