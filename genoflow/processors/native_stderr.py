"""Capture what native libraries (htslib, pybigtools' Rust) print on file descriptor 2.

Invariant: while :func:`capture` is active, descriptor 2 points at a private temporary file;
when it ends, descriptor 2 is restored whatever happened inside. The captured lines the caller
``drop``\\ s (the library's own reasons, which genoflow turns into its error message) are kept
in :attr:`Captured.dropped`; every other byte written meanwhile — by another thread, say — is
written back to the real stderr, so nothing is lost, only delayed. One capture runs at a time
in a process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["Captured", "capture", "everything"]

_LIMIT = 2000  # characters of captured text kept for a message
_ONE_AT_A_TIME = threading.Lock()


class Captured:
    """The lines a :func:`capture` block kept back; filled in when the block ends."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def summary(self) -> str:
        """The kept-back lines, stripped and cut to a length fit for a message."""
        return "\n".join(line.strip() for line in self.dropped).strip()[:_LIMIT]


def everything(_line: str) -> bool:
    """A ``drop`` predicate that keeps back every line."""
    return True


@contextlib.contextmanager
def capture(folder: str | Path | None, *, drop: Callable[[str], bool]) -> Iterator[Captured]:
    """Point descriptor 2 at a temporary file in ``folder`` for the block.

    Args:
        folder: where the temporary file lives (None: the system's temporary folder).
        drop: which captured lines to keep back from stderr (into ``Captured.dropped``).

    Yields:
        The kept-back lines, available once the block has ended (also in an ``except`` around
        the ``with``).
    """
    captured = Captured()
    with _ONE_AT_A_TIME, tempfile.TemporaryFile(dir=folder) as log:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(log.fileno(), 2)
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines = log.read().decode("utf-8", "replace").splitlines(keepends=True)
            captured.dropped = [line for line in lines if drop(line)]
            rest = "".join(line for line in lines if not drop(line))
            if rest:
                os.write(2, rest.encode("utf-8", "replace"))
