"""Put the contig blocks of a byte-ordered sort into another contig order, as they stream by.

Invariant: every byte fed in reaches the sink exactly once, each contig's block whole and
unchanged, blocks in the order given. A block is written straight through when it is the next
one the sink needs, so most of the output is compressed while sort is still writing; a block
that arrives early waits in a scratch file until its turn. Memory stays at one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from genoflow.processors.bgzf import Sink

__all__ = ["BlockReorder"]

_COPY = 1 << 20


class BlockReorder:
    """Receives lines sorted by contig bytes; writes them to ``sink`` in ``order``'s contig order.

    Args:
        order: every contig the input holds, in the order the output wants.
        sink: where the re-ordered lines go.
        spill: an empty, writable and readable scratch file for blocks that arrive early.
        count: whether to count the lines written (:attr:`lines`); a caller that checks the
            count elsewhere saves a pass over the data.
    """

    def __init__(
        self, order: list[bytes], sink: Sink, spill: IO[bytes], *, count: bool = True
    ) -> None:
        self._order = order
        self._rank = {contig: rank for rank, contig in enumerate(order)}
        self._sink = sink
        self._spill = spill
        self._next = 0
        self._waiting: dict[bytes, tuple[int, int]] = {}
        self._current: bytes | None = None
        self._direct = False
        self._start = 0
        self._tail = b""
        self.lines = 0
        self._count = count

    def write(self, data: bytes) -> None:
        """Take the next piece of sort's output (cut anywhere).

        Raises:
            ValueError: a contig that ``order`` lacks, or one whose block was already closed.
        """
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        for contig, run in _runs(data[:cut]):
            if contig != self._current:
                self._end_block()
                if contig not in self._rank or contig in self._waiting:
                    raise ValueError(f"contig {contig!r} out of place in sort output")
                self._current, self._direct = contig, self._rank[contig] == self._next
                self._start = self._spill.tell()
            (self._sink if self._direct else self._spill).write(run)
            if self._count:
                self.lines += run.count(b"\n")

    def close(self) -> None:
        """Write out every block still waiting.

        Raises:
            ValueError: the input ended inside a line, or lacked a block ``order`` promised.
        """
        if self._tail:
            raise ValueError("sort output ends without a newline")
        self._end_block()
        if self._next != len(self._order):
            raise ValueError(f"no records for contig {self._order[self._next]!r} in sort output")

    def _end_block(self) -> None:
        if self._current is None:
            return
        if self._direct:
            self._next += 1
        else:
            self._waiting[self._current] = (self._start, self._spill.tell() - self._start)
        self._current = None
        while self._next < len(self._order) and self._order[self._next] in self._waiting:
            self._copy(*self._waiting.pop(self._order[self._next]))
            self._next += 1

    def _copy(self, offset: int, length: int) -> None:
        end = self._spill.tell()
        self._spill.seek(offset)
        while length > 0:
            data = self._spill.read(min(_COPY, length))
            self._sink.write(data)
            length -= len(data)
        self._spill.seek(end)


def _runs(chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Split whole lines sorted by contig into (contig, lines) runs."""
    start, size = 0, len(chunk)
    last = chunk.rfind(b"\n", 0, size - 1) + 1
    while start < size:
        tab = chunk.find(b"\t", start, chunk.find(b"\n", start))
        if tab < 0:
            raise ValueError("a line of sort output has no tab")
        key = chunk[start : tab + 1]
        end = size if chunk.startswith(key, last) else _run_end(chunk, start, key)
        yield key[:-1], chunk[start:end]
        start = end


def _run_end(chunk: bytes, start: int, key: bytes) -> int:
    """Where the run of lines starting with ``key`` that begins at ``start`` ends.

    Binary search over byte offsets: "the first line at or after this offset starts with
    another contig" is false up to the run's last line and true from just after its start.
    """
    low, high = start + 1, len(chunk)
    while low < high:
        middle = (low + high) // 2
        if chunk.startswith(key, _line_at(chunk, middle)):
            low = middle + 1
        else:
            high = middle
    return _line_at(chunk, low)


def _line_at(chunk: bytes, offset: int) -> int:
    """The start of the first line at or after ``offset`` (``len(chunk)`` past the last)."""
    return offset if chunk[offset - 1] == 0x0A else chunk.find(b"\n", offset) + 1
