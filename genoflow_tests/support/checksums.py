"""The md5 checksums the tests compare against (hex digests, as manifests and markers hold them)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def md5_hex(data: bytes) -> str:
    """The md5 hex digest of ``data``."""
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path) -> str:
    """The md5 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
