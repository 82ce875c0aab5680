"""Validate the records of an interval file a chunk of whole lines at a time.

Invariant: :meth:`ChunkValidator.feed` accepts a chunk exactly when validating its lines one by one
with :class:`~genoflow.processors.intervals.records.RecordReader` would, and raises the same error
for the same first bad line; it raises :class:`Irregular` at the first line that is not a plain
record (a header, comment, blank or CRLF line), which is not an error but something a caller
streaming records straight into ``sort`` cannot place.

Large chunks are checked with numpy over the chunk's bytes: the positions of its newlines and
tabs give every line's columns, the position columns are read digit by digit (only ASCII digits,
at most 18 of them, so no value can pass 2^63-1), and contig names are compared as fixed-width
byte strings. Whenever that check cannot vouch for a chunk — a CR or NUL byte, a line with too
few columns, a position that is empty, too long or not all digits, a start or end out of range, a
contig name that is new and invalid — the chunk is validated line by line, which also finds the
error and its line number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from genoflow.core.errors import ProcessingError
from genoflow.processors.intervals.order import OrderCheck
from genoflow.processors.intervals.records import MAX_LINE, RecordReader, vcf_end

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
VECTORISE_ABOVE = 1 << 20
"""Data regions smaller than this are validated line by line: numpy's set-up costs more."""
MIN_FRAME = CHUNK // 4
"""Chunks smaller than this (a file's last) are validated line by line."""

_END_LINE = re.compile(rb"[^\n]*END=[^\n]*")
# Bytes that make a chunk the line-by-line path's: CR (a CRLF line) and NUL (fixed-width
# contig names would lose a trailing one).
_UNTRUSTED = (b"\r", b"\x00")
_MAX_DIGITS = 18
"""Longest position read by numpy: 18 digits stay below 2^63-1; longer ones go line by line."""
_MAX_CONTIG = 256
"""Longest contig name compared by numpy; longer ones go line by line."""
_FNV_PRIME = np.uint64(0x100000001B3)
_FRONT = np.zeros(_MAX_DIGITS, np.uint8)
_BACK = np.zeros(_MAX_CONTIG + 8, np.uint8)
_POWERS = [10 ** np.arange(n - 1, -1, -1, dtype=np.int64) for n in range(_MAX_DIGITS + 1)]
# _RIGHT_ALIGNED[w][n]: which of w columns hold an n-digit field aligned to the right.
_RIGHT_ALIGNED = [
    np.arange(w)[None, :] >= (w - np.arange(_MAX_DIGITS + 1))[:, None]
    for w in range(_MAX_DIGITS + 1)
]
_WORD_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)
"""``_WORD_MASKS[n]`` keeps the low ``n`` bytes of a little-endian word."""


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
        vectorised: whether to try numpy on large chunks.
        order: when given, every record must also keep sorted order (:class:`OutOfOrder`).
        sizes: whether to keep :attr:`sizes`.

    Attributes:
        sizes: with ``sizes=True``, the bytes each contig's records take as sort writes them
            (every line with its newline, the file's last one included), else None.
    """

    def __init__(
        self,
        reader: RecordReader,
        *,
        vectorised: bool,
        order: OrderCheck | None = None,
        sizes: bool = False,
    ) -> None:
        self.reader = reader
        self.records = 0
        self.max_end = 0
        self.sizes: dict[bytes, int] | None = {} if sizes else None
        self._vectorised = vectorised
        self._order = order
        # The contigs of the last chunk that needed sorting: (words, widths, keys, names).
        self._known: tuple[list[np.ndarray], np.ndarray, np.ndarray, list[bytes]] | None = None

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
        sizes = self.sizes
        for lineno, line in enumerate(lines, first):
            if not line:
                raise Irregular(lineno, "blank")
            if line[-1:] == b"\r":
                raise Irregular(lineno, "crlf")
            if reader.is_header(line):
                raise Irregular(lineno, "header")
            contig, start, end = reader.parse(lineno, line)
            max_end = max(max_end, end)
            if sizes is not None:
                sizes[contig] = sizes.get(contig, 0) + len(line) + 1
            if self._order is not None and (problem := self._order.add(contig, start)):
                raise OutOfOrder(lineno, problem)
        self.records += len(lines)
        self.max_end = max_end

    def _try_frame(self, chunk: bytes, first: int, rows: int) -> bool:
        """Validate the chunk with numpy; False when it cannot vouch for every line."""
        if any(byte in chunk for byte in _UNTRUSTED):
            return False
        spec = self.reader.spec
        data = np.frombuffer(chunk, dtype=np.uint8)
        ends = np.flatnonzero(data == 0x0A)
        if not chunk.endswith(b"\n"):
            ends = np.append(ends, len(chunk))
        if len(ends) != rows or rows == 0:
            return False
        begins = np.empty_like(ends)
        begins[0], begins[1:] = 0, ends[:-1] + 1
        # Blank lines and header or comment lines are the line-by-line path's to report.
        if (ends == begins).any() or (data[begins] == 0x23).any():
            return False
        tabs = np.flatnonzero(data == 0x09)
        first_tab = np.searchsorted(tabs, begins)
        # A line has min_columns columns when its (min_columns - 1)th tab is before its end.
        needed = first_tab + (spec.min_columns - 2)
        if needed[-1] >= len(tabs) or (tabs[needed] >= ends).any():
            return False
        # Column j < min_columns - 1 ends at the line's tab number j; the last required column
        # at its next tab or the line's end.
        padded = Padded(data)

        def column(j: int) -> tuple[np.ndarray, np.ndarray]:
            start = begins if j == 0 else tabs[first_tab + j - 1] + 1
            if j < spec.min_columns - 1:
                return start, tabs[first_tab + j]
            # Only then the copy of every tab position: a VCF never asks for that column.
            tab_ends = np.append(tabs, len(chunk))
            return start, np.minimum(tab_ends[first_tab + j], ends)

        names, codes = self._contigs(padded, *column(0), first)
        if names is None:
            return False
        starts = padded.integers(*column(spec.start_col))
        if starts is None or starts.min() < spec.min_start:
            return False
        if spec.end_col is not None:
            stops = padded.integers(*column(spec.end_col))
            if stops is None or (stops < starts).any():
                return False
            end = int(stops.max())
        else:
            ref_start, ref_stop = column(3)
            end = self._vcf_max_end(chunk, starts, ref_stop - ref_start)
        if self._order is not None and not self._order.add_block(codes, names, starts):
            return False
        if self.sizes is not None:
            self._add_sizes(names, codes, ends - begins + 1)
        self.records += rows
        self.max_end = max(self.max_end, end)
        return True

    def _add_sizes(self, names: list[bytes], codes: np.ndarray, lengths: np.ndarray) -> None:
        assert self.sizes is not None
        # Float weights are exact: a chunk holds far fewer than 2^53 bytes.
        totals = np.bincount(codes, weights=lengths, minlength=len(names))
        for name, total in zip(names, totals.tolist(), strict=True):
            if total:
                self.sizes[name] = self.sizes.get(name, 0) + int(total)

    def _contigs(
        self, padded: Padded, start: np.ndarray, stop: np.ndarray, first: int
    ) -> tuple[list[bytes] | None, np.ndarray]:
        """The chunk's contig names and each line's code into them; None when one is not valid.

        Each name is read as little-endian 8-byte words, zero past its end (the chunk holds no
        NUL, so the words and the width identify the name); names longer than one word are
        keyed by a hash of their words, and every line's words are then compared with those of
        its key's first line, so a hash collision only costs the fast path. Keys already
        validated in an earlier chunk are looked up, not sorted again. Each contig new to the
        reader is checked once before the chunk is accepted.
        """
        widths = stop - start
        width = int(widths.max())
        if widths.min() < 1 or width > _MAX_CONTIG:
            return None, widths
        words = padded.words(start, widths, width)
        keys = words[0] if len(words) == 1 else _hash_words(words, widths)
        known = self._known
        if known is not None and len(known[0]) == len(words):
            known_words, known_widths, known_keys, known_names = known
            codes = np.minimum(np.searchsorted(known_keys, keys), len(known_keys) - 1)
            same = (known_keys[codes] == keys).all() and (
                len(words) == 1
                or (
                    (known_widths[codes] == widths).all()
                    and all((k[codes] == w).all() for k, w in zip(known_words, words, strict=True))
                )
            )
            if same:
                return known_names, codes
        unique = np.unique(keys)
        codes = np.searchsorted(unique, keys)
        rows = np.empty(len(unique), dtype=np.int64)
        rows[codes] = np.arange(len(codes))  # any line of each key represents it
        heads = rows[codes]
        if len(words) > 1 and (
            (widths[heads] != widths).any() or any((w[heads] != w).any() for w in words)
        ):
            return None, codes
        names = [padded.bytes(start[row], stop[row]) for row in rows.tolist()]
        if any(self.reader.is_header(name) for name in names):
            return None, codes
        new = [i for i, contig in enumerate(names) if contig not in self.reader.seen_contigs]
        try:
            for i in new:
                self.reader.check_contig(first + int(rows[i]), names[i])
        except ProcessingError:
            return None, codes
        self._known = ([w[rows] for w in words], widths[rows], unique, names)
        return names, codes

    def _vcf_max_end(self, chunk: bytes, starts: np.ndarray, ref_lengths: np.ndarray) -> int:
        """VCF ends come from REF's length, or from INFO ``END=`` on the lines that carry it."""
        end = int((starts - 1 + ref_lengths).max())
        if b"END=" in chunk:
            for match in _END_LINE.finditer(chunk):
                fields = match.group().split(b"\t", 8)
                end = max(end, vcf_end(int(fields[1]), fields))
        return end


def _hash_words(words: list[np.ndarray], widths: np.ndarray) -> np.ndarray:
    """One 64-bit FNV-style hash per name, from its width and its words."""
    hashes = widths.astype(np.uint64)
    for word in words:
        hashes = (hashes * _FNV_PRIME) ^ word
    return hashes


def worth_vectorising(size: int) -> bool:
    """Whether ``size`` bytes of records are worth numpy's set-up cost."""
    return size >= VECTORISE_ABOVE


class Padded:
    """A chunk's bytes with zeros before and after, so fixed-width windows never run off it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = np.concatenate((_FRONT, data, _BACK))
        self._wide = np.lib.stride_tricks.sliding_window_view(self.data, 8)
        self._digits = np.lib.stride_tricks.sliding_window_view(self.data, _MAX_DIGITS)

    def bytes(self, start: int, stop: int) -> bytes:
        return self.data[start + len(_FRONT) : stop + len(_FRONT)].tobytes()

    def words(self, start: np.ndarray, widths: np.ndarray, width: int) -> list[np.ndarray]:
        """Each field as little-endian 8-byte words, zero past its end."""
        words = []
        for offset in range(0, width, 8):
            rows = self._wide[start + (len(_FRONT) + offset)]
            word = np.ascontiguousarray(rows).view("<u8").ravel()
            words.append(word & _WORD_MASKS[np.clip(widths - offset, 0, 8)])
        return words

    def integers(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray | None:
        """The unsigned decimal integers at ``[start, stop)``, or None when one is not one.

        Only 1 to :data:`_MAX_DIGITS` ASCII digits are accepted (leading zeros included),
        exactly what ``bytes.isdigit`` accepts below 2^63 for such short fields.
        """
        widths = stop - start
        width = int(widths.max())
        if widths.min() < 1 or width > _MAX_DIGITS:
            return None
        # Each field right-aligned in a row of ``width`` bytes: its own digits, then the bytes
        # before it, which the mask drops.
        rows = self._digits[stop + (len(_FRONT) - width), :width]
        digits = rows - np.uint8(0x30)  # wraps below "0"
        digits *= _RIGHT_ALIGNED[width][widths]  # the bytes before each field become 0
        if digits.max() > 9:
            return None
        # An integer matrix product: numpy's own loop (BLAS serves only floating point).
        return digits @ _POWERS[width]


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
        # numpy counts newlines several times faster than bytes.count.
        lines = int(np.count_nonzero(np.frombuffer(chunk, dtype=np.uint8) == 0x0A))
        yield chunk, first, lines
        first += lines
    if tail:
        yield tail, first, 1
