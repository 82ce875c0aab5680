"""The byte ranges of a sorted BGZF file (BAM or tabix-indexed text) that answer region queries.

This is the arithmetic behind an htsget ticket: read the BAI/TBI/CSI (SAMv1 §5.1–5.3, the tabix
and CSI specifications), collect the chunks of every bin that overlaps a region, drop those the
linear index (or a CSI bin's ``loffset``) proves lie wholly before it, and turn virtual offsets
into whole BGZF blocks.

Invariant: the pieces of a plan, fetched and concatenated in order, are a valid file of the same
format — header, then whole records in file order, then the 28-byte EOF block — that holds
every record overlapping the regions (more records are allowed, never fewer). No piece starts
or ends inside a record:

- BAM: a byte range starts at a block that begins with a record, proved by walking records
  (``block_size`` prefixes) forward from a virtual offset the index names as a record start,
  and ends at a block followed by one that begins with a record. htslib starts a block at a
  record unless the record is larger than a block, so the walks are short; when a proof fails
  (a record longer than a block), the end block's useful part is carried inline instead.
- Text (tabix formats): ``bgzip`` cuts blocks every 64 KiB, mid-line, so a region's first and
  last blocks are not served raw: their line-complete parts are recompressed by htslib
  (pysam) into inline pieces (htsget ``data:`` URLs); the blocks between are served raw.

BGZF is never written by hand here. Plans are cached per (data, index) path pair: artifacts
are content-addressed and immutable, so a cached answer never goes stale.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pysam

from genoflow.core.errors import GenoflowError
from genoflow.serve.hts_index import Chunk, ParsedIndex, read_index

__all__ = [
    "EOF_BLOCK",
    "ByteRange",
    "Inline",
    "Piece",
    "Plan",
    "Region",
    "UnknownReference",
    "plan_for",
]

EOF_BLOCK = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_BLOCK_CACHE = 256
_GAP = 1 << 16  # compressed bytes between two chunks below which they are fetched as one
_WALK = 1 << 18  # compressed bytes a proof of a record boundary may walk back
Kind = Literal["bam", "text"]


class BlocksError(GenoflowError):
    """A data file or its index is not the BGZF the plan needs."""

    default_stage = "htsget"
    default_hint = "the artifact is damaged: rebuild it (genoflow run) and ask again"


class UnknownReference(GenoflowError):
    """A region names a reference sequence the BAM header does not have."""

    default_stage = "htsget"
    default_hint = "ask for a reference named in the file's header"


@dataclass(frozen=True)
class Region:
    """One genomic region, 0-based half-open (htsget's coordinates).

    Attributes:
        name: a reference name; ``None`` for the whole file; ``"*"`` for unplaced unmapped reads.
        start: first base, 0-based.
        end: one past the last base; ``None`` for the reference's end.
    """

    name: str | None
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, end)`` of the data file, and the htsget class of what they hold."""

    start: int
    end: int
    cls: Literal["header", "body"]

    @property
    def header(self) -> str:
        """The HTTP ``Range`` header value (inclusive end)."""
        return f"bytes={self.start}-{self.end - 1}"

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Inline:
    """BGZF bytes carried in the ticket itself (an htsget ``data:`` URL).

    Attributes:
        data: whole BGZF blocks, compressed by htslib, holding whole records.
        cls: ``header`` or ``body``.
    """

    data: bytes
    cls: Literal["header", "body"]

    @property
    def size(self) -> int:
        return len(self.data)


Piece = ByteRange | Inline


class _Bgzf:
    """Read-only access to one immutable BGZF file: block sizes and inflated block data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        with open(path, "rb") as file:
            file.seek(max(0, self.size - len(EOF_BLOCK)))
            self.has_eof = file.read() == EOF_BLOCK
        self.data_end = self.size - len(EOF_BLOCK) if self.has_eof else self.size
        self._sizes: dict[int, int] = {}
        self._data: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def _pread(self, offset: int, length: int) -> bytes:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def block_size(self, offset: int) -> int:
        """The whole block's length in bytes: BSIZE + 1 from the block's own header."""
        size = self._sizes.get(offset)
        if size is None:
            head = self._pread(offset, 18)
            if len(head) < 18 or head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
                raise BlocksError(f"no BGZF block starts at byte {offset}", file=self.path.name)
            size = struct.unpack_from("<H", head, 16)[0] + 1
            self._sizes[offset] = size
        return size

    def data(self, offset: int) -> bytes:
        """The block's inflated bytes (a small bounded cache; blocks never change)."""
        found = self._data.get(offset)
        if found is None:
            raw = self._pread(offset, self.block_size(offset))
            try:
                found = zlib.decompress(raw, 31)
            except zlib.error as exc:
                raise BlocksError(
                    f"block at byte {offset} is corrupt", file=self.path.name
                ) from exc
            with self._lock:
                if len(self._data) >= _BLOCK_CACHE:
                    self._data.pop(next(iter(self._data)))
                self._data[offset] = found
        return found

    def next_block(self, offset: int) -> int:
        return offset + self.block_size(offset)


class _Cursor:
    """A position in the inflated stream, as (block offset, offset within the block's data)."""

    def __init__(self, bgzf: _Bgzf, voffset: int) -> None:
        self.bgzf = bgzf
        self.block, self.pos = voffset >> 16, voffset & 0xFFFF
        self._settle()

    def _settle(self) -> None:
        # A position at a block's end is the next block's start: one name for one place.
        while self.block < self.bgzf.data_end and self.pos >= len(self.bgzf.data(self.block)):
            self.pos -= len(self.bgzf.data(self.block))
            self.block = self.bgzf.next_block(self.block)
        if self.block >= self.bgzf.data_end:
            self.block, self.pos = self.bgzf.data_end, 0

    @property
    def at_end(self) -> bool:
        return self.block >= self.bgzf.data_end

    @property
    def voffset(self) -> int:
        return (self.block << 16) | self.pos

    def read(self, length: int) -> bytes:
        """The next ``length`` bytes (fewer only at the end of the data)."""
        parts = []
        while length > 0 and not self.at_end:
            chunk = self.bgzf.data(self.block)[self.pos : self.pos + length]
            parts.append(chunk)
            self.pos += len(chunk)
            length -= len(chunk)
            self._settle()
        return b"".join(parts)

    def skip(self, length: int) -> None:
        self.pos += length
        self._settle()


def _bam_boundaries(bgzf: _Bgzf, voffset: int, stop: int) -> Iterator[int]:
    """Blocks after ``voffset``'s block, up to block ``stop``, that begin with a BAM record."""
    cursor, first = _Cursor(bgzf, voffset), voffset >> 16
    while not cursor.at_end and cursor.block <= stop:
        raw = cursor.read(4)
        if len(raw) < 4:
            return
        length = struct.unpack("<i", raw)[0]
        if length < 32:  # a BAM record's fixed part alone is 32 bytes
            raise BlocksError(f"no BAM record at {voffset:#x}", file=bgzf.path.name)
        cursor.skip(length)
        if cursor.pos == 0 and first < cursor.block <= stop:
            first = cursor.block
            yield cursor.block


class Plan:
    """Byte ranges for regions of one sorted BGZF file, from its index.

    Args:
        data: the sorted BAM or BGZF text file.
        index: its ``.bai``, ``.tbi`` or ``.csi``.

    Raises:
        BlocksError: either file is not what its name says, or is damaged.
    """

    def __init__(self, data: Path, index: Path) -> None:
        self.bgzf = _Bgzf(data)
        self.index: ParsedIndex = read_index(index)
        self.kind: Kind = "text" if self.index.tabix else "bam"
        if self.kind == "bam":
            self.names, self.lengths, header_end = self._bam_header()
        else:
            self.names = list(self.index.names)
            self.lengths = [None] * len(self.names)
            begins = [c.begin for ref in self.index.refs for c in ref.all_chunks()]
            header_end = min(begins, default=self.bgzf.data_end << 16)
        self.tids = {name: tid for tid, name in enumerate(self.names)}
        self._anchors = sorted({header_end, *self.index.record_starts()})
        self._starts: dict[int, bool] = {}
        self.header_end = header_end

    def _bam_header(self) -> tuple[list[str], list[int], int]:
        cursor = _Cursor(self.bgzf, 0)
        magic, l_text = cursor.read(4), struct.unpack("<i", cursor.read(4))[0]
        if magic != b"BAM\x01":
            raise BlocksError("not a BAM file (no BAM magic)", file=self.bgzf.path.name)
        cursor.skip(l_text)
        names, lengths = [], []
        for _ in range(struct.unpack("<i", cursor.read(4))[0]):
            l_name = struct.unpack("<i", cursor.read(4))[0]
            names.append(cursor.read(l_name).rstrip(b"\0").decode("utf-8", "surrogateescape"))
            lengths.append(struct.unpack("<i", cursor.read(4))[0])
        return names, lengths, cursor.voffset

    def _starts_record(self, block: int) -> bool:
        """Whether ``block`` begins with a BAM record, proved by a short walk from an anchor.

        False also when the nearest anchor is too far to walk cheaply: the caller then
        serves that block's useful part inline rather than guess.
        """
        known = self._starts.get(block)
        if known is None:
            at = bisect.bisect_right(self._anchors, block << 16)
            anchor = self._anchors[at - 1] if at else -1
            if anchor == block << 16:
                known = True
            elif anchor < 0 or (anchor >> 16) < block - _WALK:
                known = False
            else:
                known = block in _bam_boundaries(self.bgzf, anchor, block)
            self._starts[block] = known
        return known

    def chunks(self, region: Region) -> list[Chunk]:
        """The index's chunks (virtual offsets) that may hold records overlapping ``region``.

        Raises:
            UnknownReference: a BAM region names a reference the header lacks.
        """
        stop = self.bgzf.data_end << 16
        if region.name is None:
            return [Chunk(self.header_end, stop)]
        if region.name == "*":
            ends = [c.end for ref in self.index.refs for c in ref.all_chunks()]
            return [Chunk(max([self.header_end, *ends]), stop)]
        tid = self.tids.get(region.name)
        if tid is None:
            if self.kind == "bam":
                raise UnknownReference("no such reference in the header", file=region.name)
            return []  # a tabix index names only contigs with records: none here
        if tid >= len(self.index.refs):
            return []
        end = region.end if region.end is not None else self.lengths[tid] or self.index.max_pos
        return self.index.query(tid, region.start, min(end, self.index.max_pos))

    def ranges(self, regions: Sequence[Region], *, header_only: bool = False) -> list[Piece]:
        """What a client fetches, in order: header, bodies, EOF block.

        Args:
            regions: the regions wanted (ignored when ``header_only``).
            header_only: htsget's ``class=header``: the header and the EOF block only.
        """
        spans: list[Chunk] = []
        if not header_only:
            spans = [chunk for region in regions for chunk in self.chunks(region)]
        pieces = self._header() + self._body(_merge(spans, self.header_end))
        if self.bgzf.has_eof:
            pieces.append(ByteRange(self.bgzf.data_end, self.bgzf.size, "body"))
        return _join(pieces)

    def _header(self) -> list[Piece]:
        if self.kind == "bam":
            return self._bam_pieces(Chunk(0, self.header_end), "header", exact_end=True)
        return self._text_pieces(Chunk(0, self.header_end), "header")

    def _body(self, spans: list[Chunk]) -> list[Piece]:
        cut = self._bam_pieces if self.kind == "bam" else self._text_pieces
        return [piece for span in spans for piece in cut(span, "body")]

    def _bam_pieces(
        self, span: Chunk, cls: Literal["header", "body"], *, exact_end: bool = False
    ) -> list[Piece]:
        """Records ``span`` covers as raw blocks; an end block that does not begin (or whose
        successor does not begin) with a record is carried inline, recompressed by htslib."""
        (first, head), (last, tail) = divmod(span.begin, 1 << 16), divmod(span.end, 1 << 16)
        pieces: list[Piece] = []
        if head and not self._starts_record(first):
            if first == last:
                return [Inline(_compress(self.bgzf.data(first)[head:tail]), cls)]
            pieces.append(Inline(_compress(self.bgzf.data(first)[head:]), cls))
            first = self.bgzf.next_block(first)
        if not tail or last >= self.bgzf.data_end:
            return [*pieces, ByteRange(first, min(last, self.bgzf.data_end), cls)]
        after = self.bgzf.next_block(last)
        if not exact_end and after in _bam_boundaries(self.bgzf, span.end, after):
            return [*pieces, ByteRange(first, after, cls)]
        return [*pieces, ByteRange(first, last, cls), Inline(self._tail(last, tail), cls)]

    def _tail(self, block: int, tail: int) -> bytes:
        return _compress(self.bgzf.data(block)[:tail])

    def _text_pieces(self, span: Chunk, cls: Literal["header", "body"]) -> list[Piece]:
        """Whole lines ``span`` covers: raw blocks, with inline blocks for the partial ends.

        Text records straddle BGZF blocks (``bgzip`` cuts every 64 KiB), so the first and
        last blocks' own bytes would bring half lines; their line-complete parts are
        recompressed by htslib (pysam) into inline blocks instead.
        """
        (first, head), (last, tail) = divmod(span.begin, 1 << 16), divmod(span.end, 1 << 16)
        if first == last:
            data = self.bgzf.data(first)[head:tail] if first < self.bgzf.data_end else b""
            return [Inline(_compress(data), cls)] if data else []
        pieces: list[Piece] = []
        if head:
            pieces.append(Inline(_compress(self.bgzf.data(first)[head:]), cls))
            first = self.bgzf.next_block(first)
        if last > first:
            pieces.append(ByteRange(first, last, cls))
        if tail and last < self.bgzf.data_end:
            pieces.append(Inline(_compress(self.bgzf.data(last)[:tail]), cls))
        return pieces


def _merge(chunks: list[Chunk], floor: int) -> list[Chunk]:
    """Chunks at or after ``floor``, joined when fewer than ``_GAP`` compressed bytes part them.

    Fetching a few unwanted bytes costs less than another request and another block-edge
    proof; the client filters the extra records out.
    """
    merged: list[Chunk] = []
    for begin, end in sorted(chunks):
        begin = max(begin, floor)
        if end <= begin:
            continue
        if merged and (begin >> 16) - (merged[-1].end >> 16) <= _GAP:
            merged[-1] = Chunk(merged[-1].begin, max(merged[-1].end, end))
        else:
            merged.append(Chunk(begin, end))
    return merged


def _join(pieces: list[Piece]) -> list[Piece]:
    """Touching byte ranges of one class joined; empty pieces dropped."""
    joined: list[Piece] = []
    for piece in pieces:
        last = joined[-1] if joined else None
        if isinstance(piece, ByteRange) and piece.end <= piece.start:
            continue
        if (
            isinstance(piece, ByteRange)
            and isinstance(last, ByteRange)
            and last.cls == piece.cls
            and piece.start <= last.end
        ):
            joined[-1] = ByteRange(last.start, max(last.end, piece.end), piece.cls)
        else:
            joined.append(piece)
    return joined


_COMPRESSED_BUDGET = 8 << 20  # bytes of compressed pieces remembered per process
_compressed: OrderedDict[bytes, bytes] = OrderedDict()  # blake2b of the inflated bytes → BGZF
_compressed_size = 0
_compressed_lock = threading.Lock()


def _compress(data: bytes) -> bytes:
    """``data`` as BGZF blocks written by htslib (pysam), without the EOF block.

    Remembered by a 128-bit digest of ``data`` (never the inflated bytes themselves), least
    recently used first out, within :data:`_COMPRESSED_BUDGET` bytes of output.
    """
    global _compressed_size
    key = hashlib.blake2b(data, digest_size=16).digest()
    with _compressed_lock:
        found = _compressed.get(key)
        if found is not None:
            _compressed.move_to_end(key)
            return found
    found = _bgzf_in_memory(data)
    with _compressed_lock:
        if key not in _compressed:
            _compressed[key] = found
            _compressed_size += len(found)
        while _compressed_size > _COMPRESSED_BUDGET and _compressed:
            _compressed_size -= len(_compressed.popitem(last=False)[1])
    return found


def _bgzf_in_memory(data: bytes) -> bytes:
    """htslib's BGZF of ``data`` (no EOF block), written to an anonymous in-memory file."""
    fd = os.memfd_create("genoflow-htsget", os.MFD_CLOEXEC)
    try:
        with pysam.BGZFile(f"/proc/self/fd/{fd}", "wb") as out:
            out.write(data)
        raw = os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    return raw[: -len(EOF_BLOCK)] if raw.endswith(EOF_BLOCK) else raw


@lru_cache(maxsize=64)
def _cached(data: str, index: str, stamp: tuple[int, int, int, int]) -> Plan:
    del stamp  # part of the key only: a replaced file at the same path is a new plan
    return Plan(Path(data), Path(index))


def plan_for(data: str | Path, index: str | Path) -> Plan:
    """The (cached) plan for a data file and its index.

    Raises:
        BlocksError: either file is damaged.
        OSError: either file cannot be read.
    """
    d, i = os.stat(data), os.stat(index)
    return _cached(str(data), str(index), (d.st_size, d.st_mtime_ns, i.st_size, i.st_mtime_ns))
