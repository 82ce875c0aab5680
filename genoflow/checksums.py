"""Streaming checksums shared by the processors and the storage layer."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def md5_file(path: str | Path) -> str:
    """Return the lower-case hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
