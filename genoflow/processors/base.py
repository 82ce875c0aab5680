"""What every processor returns, and the small helpers they share.

Processors are pure file transforms: a path in, files written into ``out_dir``, a
:class:`Result` back. They import no dagster and write nothing outside ``out_dir`` and
``work_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genoflow.core.checksums import md5_file
from genoflow.core.errors import ProcessingError

__all__ = ["Result", "SortCheck", "link_or_copy", "md5_file", "require_output"]


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
