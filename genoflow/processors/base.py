"""What every processor returns, and the small helpers they share.

Processors are pure file transforms: a path in, files written into ``out_dir``, a
:class:`Result` back. They import no dagster and write nothing outside ``out_dir`` and
``work_dir``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genoflow.checksums import md5_file
from genoflow.errors import ProcessingError

__all__ = ["Result", "SortCheck", "link_or_copy", "md5_file", "parse_memory", "require_output"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Result:
    """What a processor produced.

    Attributes:
        files: the files written, all directly inside ``out_dir``; the first is the main one.
        records_in: non-header records read from the input.
        records_out: records written to the main output.
        metadata: JSON-serialisable facts worth showing (index kind, contigs, header lines…).
    """

    files: list[Path]
    records_in: int
    records_out: int
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_memory(value: str | int) -> int:
    """Parse a size such as ``768M``, ``2G`` or ``1048576`` into bytes.

    Raises:
        ValueError: when the value is not a positive size.
    """
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", value.upper())
        if not match:
            raise ValueError(f"not a memory size: {value!r} (use e.g. 768M or 2G)")
        size = int(match.group(1)) * _UNITS[match.group(2)]
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return size


def require_output(path: Path, *, name: str, stage: str) -> Path:
    """Fail with a clear error unless ``path`` exists and is non-empty."""
    if not path.is_file() or path.stat().st_size == 0:
        raise ProcessingError(
            f"expected output {path.name} was not written", file=name, stage=stage
        )
    return path


@dataclass(frozen=True)
class SortCheck:
    """The outcome of re-reading an output to prove its order.

    Attributes:
        records: data records read.
        ordered: whether every record came in the expected order.
        problem: for a failure, the first violation (``"line 12: chr2:5 after chr2:9"``).
    """

    records: int
    ordered: bool
    problem: str | None = None


def link_or_copy(src: Path, dst: Path) -> Path:
    """Hard-link ``src`` to ``dst`` (same filesystem), or copy it when linking is refused."""
    import os
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that shape the bytes of every artifact."""
    import pysam.version

    return {
        "pysam": pysam.version.__version__,
        "htslib": pysam.version.__htslib_version__,
        "samtools": pysam.version.__samtools_version__,
    }
