"""Streaming checksums, and opening files to read, shared by the processors and the storage layer.

Invariant: :func:`open_regular` never blocks and never reads from anything but a regular file.
It opens non-blocking (a FIFO without a writer would otherwise hang ``open`` forever) and then
judges the descriptor it opened with ``fstat``, never the path, so a path swapped between a check
and the open cannot slip a FIFO, a device or a socket past it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """The path names something other than a regular file (a folder, FIFO, device, socket).

    Attributes:
        kind: what it is instead, e.g. ``"a FIFO (named pipe)"``.
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(f"is {kind}, not a regular file")
        self.strerror = f"is {kind}, not a regular file"
        self.filename = str(path)
        self.kind = kind


def kind_of(mode: int) -> str:
    """Name the kind of file a ``st_mode`` describes ("a regular file", "a FIFO (named pipe)"…)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path, *, check: Callable[[int], None] | None = None) -> BinaryIO:
    """Open a regular file for reading, refusing anything else without blocking or reading.

    Args:
        path: the file to open (symlinks are followed; the file they lead to is judged).
        check: called with the opened descriptor before its kind is judged (a confinement
            check, say); whatever it raises is raised, the descriptor closed.

    Returns:
        A binary reader on the descriptor that was checked.

    Raises:
        NotRegularFileError: the path is a folder, FIFO, device or socket.
        OSError: the path cannot be opened (missing, permission denied…).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        if check is not None:
            check(fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, kind_of(mode))
        # Regular files ignore O_NONBLOCK; clearing it keeps the reader's semantics plain.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def md5_file(path: str | Path) -> str:
    """Return the lower-case hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
