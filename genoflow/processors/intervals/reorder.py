"""Put the contig blocks of a byte-ordered sort into another contig order, as they stream by.

Invariant: every byte sort writes reaches the sink exactly once, each contig's block whole and
unchanged, blocks in the order given. The size of every block is known before sort writes its
first byte (the validator counted each contig's bytes), so blocks are cut by length, never by
reading lines: the bytes move from pipe to pipe or file inside the kernel (``splice``), and
Python touches only the first bytes of each block, to check that it starts with its contig. A
block that is the next one the sink needs goes straight through while sort is still writing;
one that arrives early waits in a scratch file until its turn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from genoflow.processors.intervals.bgzf import Sink

__all__ = ["reorder_blocks"]

_COPY = 1 << 20


def reorder_blocks(
    source: int,
    sizes: Mapping[bytes, int],
    order: list[bytes],
    sink: int | Sink,
    spill: int,
) -> None:
    """Copy sort's output from ``source`` to ``sink`` with its contig blocks in ``order``.

    Args:
        source: the read end of sort's stdout, whose lines are sorted by contig bytes.
        sizes: the bytes of every contig's block; together, everything sort writes.
        order: every contig of ``sizes``, in the order the output wants.
        sink: the write end of a pipe (bytes are spliced into it), or a :class:`Sink`.
        spill: an empty, readable and writable scratch file for blocks that arrive early.

    Raises:
        ValueError: sort's output ends early or goes on, or a block does not start with its
            contig; or ``order`` and ``sizes`` name different contigs.
        BrokenPipeError: ``sink`` is a pipe whose reader has gone.
    """
    if sorted(order) != sorted(sizes):
        raise ValueError("the contig order does not name the contigs sort was given")
    waiting: dict[bytes, tuple[int, int]] = {}
    spilled = 0
    wanted = iter(order)
    needed = next(wanted, None)
    for contig in sorted(sizes):
        size = sizes[contig]
        head = _read_exactly(source, len(contig) + 1)  # a record holds a tab after its contig
        if head != contig + b"\t":
            raise ValueError(f"contig {contig!r} out of place in sort output")
        if contig != needed:
            os.pwrite(spill, head, spilled)
            _splice(source, spill, size - len(head), offset_dst=spilled + len(head))
            waiting[contig], spilled = (spilled, size), spilled + size
            continue
        _write(sink, head)
        _move(source, sink, size - len(head))
        needed = next(wanted, None)
        while needed in waiting:
            offset, length = waiting.pop(needed)
            _move(spill, sink, length, offset=offset)
            needed = next(wanted, None)
    if os.read(source, 1):
        raise ValueError("sort output holds more bytes than its records")


def _read_exactly(source: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = os.read(source, size - len(data))
        if not more:
            raise ValueError("sort output ended early")
        data += more
    return data


def _write(sink: int | Sink, data: bytes) -> None:
    if isinstance(sink, int):
        view = memoryview(data)
        while view:
            view = view[os.write(sink, view) :]
    else:
        sink.write(data)


def _move(source: int, sink: int | Sink, size: int, *, offset: int | None = None) -> None:
    """Copy ``size`` bytes of ``source`` (from ``offset`` when it is a file) to ``sink``."""
    if isinstance(sink, int):
        _splice(source, sink, size, offset_src=offset)
        return
    while size > 0:
        want = min(_COPY, size)
        data = os.read(source, want) if offset is None else os.pread(source, want, offset)
        if not data:
            raise ValueError("sort output ended early")
        sink.write(data)
        size -= len(data)
        if offset is not None:
            offset += len(data)


def _splice(
    source: int,
    sink: int,
    size: int,
    *,
    offset_src: int | None = None,
    offset_dst: int | None = None,
) -> None:
    """Move ``size`` bytes in the kernel; one of the two ends must be a pipe.

    Where the system has no ``splice`` (it is Linux's), the bytes pass through Python.
    """
    if not hasattr(os, "splice"):
        _copy(source, sink, size, offset_src=offset_src, offset_dst=offset_dst)
        return
    while size > 0:
        moved = os.splice(source, sink, min(_COPY, size), offset_src, offset_dst)
        if not moved:
            raise ValueError("sort output ended early")
        size -= moved
        if offset_src is not None:
            offset_src += moved
        if offset_dst is not None:
            offset_dst += moved


def _copy(
    source: int, sink: int, size: int, *, offset_src: int | None, offset_dst: int | None
) -> None:
    while size > 0:
        want = min(_COPY, size)
        data = os.read(source, want) if offset_src is None else os.pread(source, want, offset_src)
        if not data:
            raise ValueError("sort output ended early")
        view = memoryview(data)
        while view:
            if offset_dst is None:
                done = os.write(sink, view)
            else:
                done = os.pwrite(sink, view, offset_dst)
                offset_dst += done
            view = view[done:]
        size -= len(data)
        if offset_src is not None:
            offset_src += len(data)
