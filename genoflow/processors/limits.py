"""What one input may cost on disk: a cap on decompression expansion, and free space to sort.

Invariant: a compressed input whose decompressed bytes exceed ``max_expansion`` times its size on
disk (``GENOFLOW_MAX_EXPANSION``, default 100; 0 means no cap) is refused as soon as that many bytes
have been produced, or before anything is decompressed when its BGZF blocks declare their sizes; and
a sort starts only when the work folder's filesystem has room for what it can need. Each refusal is
a :class:`~genoflow.core.errors.ProcessingError` naming the file, the stage and the setting or space
to change. Inputs that expand to less than :data:`EXPANSION_FLOOR` are never refused: they cannot
fill a disk, and tiny repetitive files compress extremely well.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from genoflow.core.errors import ProcessingError
from genoflow.core.settings import DEFAULT_MAX_EXPANSION, EXPANSION_VARIABLE

__all__ = [
    "DEFAULT_MAX_EXPANSION",
    "EXPANSION_FLOOR",
    "EXPANSION_VARIABLE",
    "ExpansionGuard",
    "bgzf_expanded_size",
    "require_free_space",
]

EXPANSION_FLOOR = 16 << 20
"""Decompressed bytes allowed whatever the ratio says (16 MiB)."""

_HEADER = struct.Struct("<4sI2sH")  # magic+method+flags, mtime, xfl+os, xlen


class ExpansionGuard:
    """Counts the bytes decompressed from ``src`` and refuses more than the cap allows.

    Args:
        src: the compressed input (its size on disk is the ratio's denominator).
        ratio: the cap, decompressed bytes per compressed byte; 0 or less means no cap.
        name: the file's user-facing name, used in errors.
        stage: the stage, used in errors.
    """

    def __init__(self, src: Path, ratio: float, *, name: str, stage: str) -> None:
        self.ratio, self.name, self.stage = ratio, name, stage
        self.limit = max(int(src.stat().st_size * ratio), EXPANSION_FLOOR) if ratio > 0 else None
        self.seen = 0

    def add(self, count: int) -> None:
        """Record ``count`` more decompressed bytes.

        Raises:
            ProcessingError: the total is now beyond the cap.
        """
        self.seen += count
        if self.limit is not None and self.seen > self.limit:
            raise self.error()

    def reached(self, total: int) -> None:
        """Record that ``total`` bytes have been decompressed so far (a stream's position).

        Raises:
            ProcessingError: ``total`` is beyond the cap.
        """
        self.add(total - self.seen)

    def check_declared(self, size: int | None) -> None:
        """Refuse up front when the blocks' declared decompressed size is already beyond the cap."""
        if size is not None and self.limit is not None and size > self.limit:
            raise self.error()

    def error(self) -> ProcessingError:
        """The refusal: decompressing more than the cap allows."""
        shown = f"{self.ratio:g}"
        return ProcessingError(
            f"decompresses to more than {shown}× its size ({EXPANSION_VARIABLE}={shown})",
            file=self.name,
            stage=self.stage,
            hint=f"if the file is genuine, raise {EXPANSION_VARIABLE} (0 means no cap) and run "
            "again; otherwise it is a decompression bomb: remove it from the manifest",
        )


def bgzf_expanded_size(path: Path) -> int | None:
    """The decompressed size a BGZF file's blocks declare, read from block headers alone.

    Each block records its compressed size (BSIZE) and decompressed size (ISIZE), so walking
    the blocks costs two small reads per 64 KiB of data. Returns None when ``path`` is not a
    well-formed chain of BGZF blocks (plain gzip, or damage a later stage will report).
    """
    total, offset, end = 0, 0, path.stat().st_size
    with open(path, "rb", buffering=0) as handle:
        while offset < end:
            handle.seek(offset)
            head = handle.read(_HEADER.size)
            if len(head) < _HEADER.size or head[:4] != b"\x1f\x8b\x08\x04":
                return None
            block = _block_size(handle.read(_HEADER.unpack(head)[3]))
            if block is None or offset + block > end:
                return None
            handle.seek(offset + block - 4)
            total += struct.unpack("<I", handle.read(4))[0]
            offset += block
    return total


def _block_size(extra: bytes) -> int | None:
    """BSIZE + 1 from a gzip header's extra field (the BC subfield), or None."""
    at = 0
    while at + 4 <= len(extra):
        ident, length = extra[at : at + 2], struct.unpack_from("<H", extra, at + 2)[0]
        if ident == b"BC" and length == 2 and at + 6 <= len(extra):
            return struct.unpack_from("<H", extra, at + 4)[0] + 1
        at += 4 + length
    return None


def require_free_space(folder: Path, need: int, *, name: str, stage: str, why: str) -> None:
    """Refuse to start when ``folder``'s filesystem has less than ``need`` bytes free.

    Args:
        folder: an existing folder on the filesystem the work will use.
        need: bytes the work can need.
        name: the file's user-facing name, used in errors.
        stage: the stage, used in errors.
        why: how ``need`` was reckoned, for the message (``"twice its decompressed size"``).

    Raises:
        ProcessingError: there is not enough free space.
    """
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    if free < need:
        raise ProcessingError(
            f"the work folder's filesystem has {_human(free)} free, and sorting it can need "
            f"about {_human(need)} ({why})",
            file=name,
            stage=stage,
            hint="free space under GENOFLOW_HOME, or point GENOFLOW_HOME at a larger disk, "
            "and run again",
        )


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"
