"""Seals: whether an artifact's files are still exactly the bytes this process built and saw.

Invariant: an artifact is *sealed* only when this very process built it — hashing, counting and
indexing its bytes as it wrote them — published it, and every one of its files still has the
device, inode, size, mtime and ctime it had right after publishing. Any write, truncation,
chmod, link or rename of a file sets its ctime to the current time, which no process can set
back, and :func:`seal` waits until the file's ctime is older than the kernel's coarsest clock
tick, so a later change always shows. A sealed artifact's checks may therefore rest on what the
build observed (recorded in ``details['observed']``) plus cheap probes. An artifact loaded from
the cache in any other way — a later run, a step in another process — is never sealed, and its
checks re-read it in full, as ``genoflow verify`` always does.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from genoflow.storage.cache import Artifact

__all__ = ["seal", "sealed"]

# Linux stamps ctime from a coarse clock that advances once per jiffy (1–10 ms).
_TICK_NS = 20_000_000
_SEALS: dict[str, tuple[str, tuple[tuple[int, ...], ...]]] = {}
_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, ...]:
    found = os.stat(path)
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _stamps(artifact: Artifact) -> tuple[tuple[int, ...], ...]:
    return tuple(_stamp(path) for path in artifact.files)


def seal(artifact: Artifact) -> None:
    """Remember ``artifact``'s files as they are now: this process has just built and published
    them. Waits (at most ~20 ms) until their ctimes are past the current clock tick."""
    stamps = _stamps(artifact)
    newest = max(stamp[4] for stamp in stamps)
    wait = newest + _TICK_NS - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    with _LOCK:
        _SEALS[str(artifact.path)] = (artifact.checksum, stamps)


def sealed(artifact: Artifact) -> bool:
    """Whether ``artifact`` was built and published by this process and is unchanged since."""
    with _LOCK:
        found = _SEALS.get(str(artifact.path))
    if found is None or found[0] != artifact.checksum:
        return False
    try:
        return _stamps(artifact) == found[1]
    except OSError:
        return False
