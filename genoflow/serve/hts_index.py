"""BAI, TBI and CSI indexes, read into memory, and the chunks they name for a region.

Invariant: :meth:`ParsedIndex.query` returns every chunk that may hold a record overlapping the
region, as htslib's ``hts_itr_query`` finds them — the chunks of each bin the region touches
(SAMv1 §5.3 ``reg2bins``, generalised to CSI's ``min_shift`` and ``depth``), less those that end
before the smallest virtual offset of a record overlapping the region's first window (BAI/TBI
linear index; a CSI bin's ``loffset``). Chunk starts are raised to that offset too: no record
before it can overlap the region, because records are sorted by start.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from genoflow.core.errors import GenoflowError

__all__ = ["Chunk", "ParsedIndex", "RefIndex", "read_index"]


class IndexFormatError(GenoflowError):
    """An index file is not BAI, TBI or CSI, or is cut short."""

    default_stage = "htsget"
    default_hint = "the index is damaged: rebuild it (genoflow run) and ask again"


class Chunk(NamedTuple):
    """Virtual offsets ``[begin, end)``: ``coffset << 16 | uoffset``."""

    begin: int
    end: int


@dataclass
class RefIndex:
    """One reference's bins (without the pseudo-bin), CSI ``loffset``s and linear index."""

    bins: dict[int, list[Chunk]] = field(default_factory=dict)
    loffsets: dict[int, int] = field(default_factory=dict)
    linear: list[int] = field(default_factory=list)
    span: Chunk | None = None  # the pseudo-bin's first chunk: the reference's first and last

    def all_chunks(self) -> list[Chunk]:
        found = [chunk for chunks in self.bins.values() for chunk in chunks]
        return [*found, self.span] if self.span else found


@dataclass
class ParsedIndex:
    """An index in memory.

    Attributes:
        kind: ``bai``, ``tbi`` or ``csi``.
        min_shift: width of the smallest bin, as a power of two (14 for BAI and TBI).
        depth: levels below the root bin (5 for BAI and TBI).
        refs: per reference id, in the data file's order.
        names: the reference names a tabix index carries (empty for BAI and a BAM's CSI).
        tabix: whether the data is tabix-indexed text (TBI, or CSI with tabix metadata).
    """

    kind: str
    min_shift: int
    depth: int
    refs: list[RefIndex]
    names: tuple[str, ...] = ()
    tabix: bool = False

    @property
    def max_pos(self) -> int:
        return 1 << (self.min_shift + 3 * self.depth)

    @property
    def pseudo_bin(self) -> int:
        return ((1 << (3 * (self.depth + 1))) - 1) // 7 + 1

    def record_starts(self) -> set[int]:
        """Virtual offsets the index proves to be record starts (chunk bounds, linear index)."""
        starts = {bound for ref in self.refs for chunk in ref.all_chunks() for bound in chunk}
        starts.update(offset for ref in self.refs for offset in ref.linear if offset)
        starts.update(offset for ref in self.refs for offset in ref.loffsets.values() if offset)
        return starts

    def query(self, tid: int, beg: int, end: int) -> list[Chunk]:
        """Chunks that may hold records of reference ``tid`` overlapping ``[beg, end)``."""
        ref = self.refs[tid]
        if end <= beg or not ref.bins:
            return []
        floor = self._min_offset(ref, beg)
        wanted = self._bins(beg, end, present=ref.bins.keys())
        return [
            Chunk(max(chunk.begin, floor), chunk.end)
            for bin_ in wanted
            for chunk in ref.bins[bin_]
            if chunk.end > floor
        ]

    def _bins(self, beg: int, end: int, *, present) -> list[int]:
        """Bins overlapping ``[beg, end)`` that the reference has (``reg2bins``)."""
        levels, shift, first, total = [], self.min_shift + 3 * self.depth, 0, 0
        for level in range(self.depth + 1):
            low, high = first + (beg >> shift), first + ((end - 1) >> shift)
            levels.append((low, high))
            total += high - low + 1
            shift -= 3
            first += 1 << (3 * level)
        if total > len(present):
            return [b for b in present if any(low <= b <= high for low, high in levels)]
        return [b for low, high in levels for b in range(low, high + 1) if b in present]

    def _min_offset(self, ref: RefIndex, beg: int) -> int:
        if self.kind != "csi":
            if not ref.linear:
                return 0
            return ref.linear[min(beg >> self.min_shift, len(ref.linear) - 1)]
        # CSI keeps no linear index: take the loffset of the region's leaf bin or, when that
        # bin is absent, of its nearest left sibling or ancestor (htslib's walk).
        bin_ = ((1 << (3 * self.depth)) - 1) // 7 + (beg >> self.min_shift)
        while bin_ not in ref.loffsets and bin_ > 0:
            parent = (bin_ - 1) >> 3
            bin_ = bin_ - 1 if bin_ > (parent << 3) + 1 else parent
        return ref.loffsets.get(bin_, 0)


class _Reader:
    def __init__(self, raw: bytes, path: Path) -> None:
        self.raw, self.at, self.path = raw, 0, path

    def take(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from(fmt, self.raw, self.at)
        except struct.error as exc:
            raise IndexFormatError("the index is cut short", file=self.path.name) from exc
        self.at += struct.calcsize(fmt)
        return values

    def one(self, fmt: str) -> int:
        return self.take(fmt)[0]

    def chunks(self, count: int) -> list[Chunk]:
        return [Chunk(*self.take("<QQ")) for _ in range(count)]


def read_index(path: str | Path) -> ParsedIndex:
    """Read a ``.bai``, ``.tbi`` or ``.csi`` (TBI and CSI are BGZF-compressed).

    Raises:
        IndexFormatError: the file is none of those, or is cut short.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)  # BGZF is multi-member gzip
    reader = _Reader(raw, path)
    magic = raw[:4]
    reader.at = 4
    if magic in (b"BAI\x01", b"TBI\x01"):
        return _linear_index(reader, magic[:3].decode().lower())
    if magic == b"CSI\x01":
        return _csi(reader)
    raise IndexFormatError("not a BAI, TBI or CSI index", file=path.name)


def _names_block(reader: _Reader) -> tuple[str, ...]:
    """Tabix's format, columns, meta char, skip and the NUL-separated names."""
    reader.take("<iiiiii")
    length = reader.one("<i")
    names = reader.raw[reader.at : reader.at + length].split(b"\0")
    reader.at += length
    return tuple(n.decode("utf-8", "surrogateescape") for n in names if n)


def _linear_index(reader: _Reader, kind: str) -> ParsedIndex:
    n_ref = reader.one("<i")
    names = _names_block(reader) if kind == "tbi" else ()
    index = ParsedIndex(kind, 14, 5, [], names, tabix=kind == "tbi")
    for _ in range(n_ref):
        ref = RefIndex()
        for _ in range(reader.one("<i")):
            bin_, n_chunk = reader.take("<Ii")
            chunks = reader.chunks(n_chunk)
            if bin_ == index.pseudo_bin:
                ref.span = chunks[0] if chunks else None
            else:
                ref.bins[bin_] = chunks
        ref.linear = list(reader.take(f"<{reader.one('<i')}Q"))
        index.refs.append(ref)
    return index


def _csi(reader: _Reader) -> ParsedIndex:
    min_shift, depth, l_aux = reader.take("<iii")
    aux_end = reader.at + l_aux
    names = _names_block(reader) if l_aux >= 28 else ()
    reader.at = aux_end
    index = ParsedIndex("csi", min_shift, depth, [], names, tabix=l_aux >= 28)
    for _ in range(reader.one("<i")):
        ref = RefIndex()
        for _ in range(reader.one("<i")):
            bin_, loffset, n_chunk = reader.take("<IQi")
            chunks = reader.chunks(n_chunk)
            if bin_ == index.pseudo_bin:
                ref.span = chunks[0] if chunks else None
            else:
                ref.bins[bin_] = chunks
                ref.loffsets[bin_] = loffset
        index.refs.append(ref)
    return index
