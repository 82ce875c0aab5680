"""The order a sorted interval file must keep, checked record by record or a chunk at a time.

Invariant: :class:`OrderCheck` accepts records exactly when contig blocks are contiguous and in
the expected order (the VCF header's ``##contig`` order when it has one, else byte order) and
starts do not decrease within a contig; its chunk check and its record check agree.
"""

from __future__ import annotations

import numpy as np

from genoflow.processors.intervals.records import RecordReader, show

__all__ = ["OrderCheck"]


class OrderCheck:
    """Tracks the previous record's contig and start; says what is wrong with the next one."""

    def __init__(self, reader: RecordReader) -> None:
        self._ranks = reader.contigs
        self._seen: set[bytes] = set()
        self._contig: bytes | None = None
        self._start = 0
        self.records = 0

    def add(self, contig: bytes, start: int) -> str | None:
        """Count one record; return what is wrong with its place, or None."""
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

    def add_block(self, codes: np.ndarray, names: list[bytes], starts: np.ndarray) -> bool:
        """Count a chunk of records (contig codes into ``names``, and starts) if all are in order.

        Returns:
            True, with the state advanced past the chunk, when every record is in place; False,
            with the state untouched, when one is not (replay the chunk through :meth:`add` to
            learn which and why).
        """
        same = codes[1:] == codes[:-1]
        if (same & (starts[1:] < starts[:-1])).any():
            return False
        heads = [0, *(np.flatnonzero(~same) + 1).tolist()]
        contig, start, new = self._contig, self._start, set()
        for head in heads:
            name = names[codes[head]]
            if name == contig:
                if starts[head] < start:
                    return False
                continue
            if name in self._seen or name in new:
                return False
            if contig is not None and self._key(name) < self._key(contig):
                return False
            new.add(name)
            contig = name
        self._seen |= new
        self._contig, self._start = contig, int(starts[-1])
        self.records += len(codes)
        return True
