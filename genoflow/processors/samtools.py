"""Call pysam's bundled samtools in-process, turning its failures into ProcessingErrors.

Invariant: every call returns samtools' output or raises a
:class:`~genoflow.errors.ProcessingError` that names the file, the stage and what samtools said;
htslib's process-wide verbosity is the same after a call as before it; and ``samtools sort``'s
temporary runs live in a private folder that is removed on every path.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pysam

from genoflow.errors import ProcessingError

__all__ = ["count", "flagstat", "run", "run_sort", "sort_budget"]

# samtools sort refuses -m below 1 MiB; fewer, larger runs are better than many tiny ones, so
# threads are dropped before the per-thread share falls under this floor.
_MIN_MEMORY_PER_THREAD = 1 << 20


def run(
    command: Callable[..., str],
    *args: str,
    name: str,
    stage: str,
    what: str,
    hint: str | Callable[[], str] | None = None,
    verbosity: int = 0,
) -> str:
    """Call a pysam samtools dispatcher, turning its exit status into a ProcessingError.

    samtools runs in this process: ``quickcheck`` sets htslib's global verbosity to 0, which
    would silence every later message (even sort's spill report), so it is restored here.
    ``verbosity`` raises it for this call only; ``hint`` may be computed on failure.
    """
    previous = pysam.get_verbosity()
    pysam.set_verbosity(max(previous, verbosity))
    try:
        return command(*args)
    except pysam.SamtoolsError as error:
        said = str(error.value).split("stderr=", 1)[-1].strip() or str(error.value)
        advice = hint() if callable(hint) else hint
        raise ProcessingError(
            f"samtools {what} failed: {said}", file=name, stage=stage, hint=advice
        ) from error
    finally:
        pysam.set_verbosity(previous)


def sort_budget(memory: int, threads: int) -> tuple[int, int]:
    """Split the total cap into (threads, bytes per thread), keeping each share above the floor.

    Raises:
        ValueError: ``threads`` below 1, or ``memory`` below what one sort thread needs.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if memory < _MIN_MEMORY_PER_THREAD:
        raise ValueError(
            f"sort memory {memory} bytes is below the {_MIN_MEMORY_PER_THREAD} bytes "
            "one samtools sort thread needs"
        )
    used = min(threads, memory // _MIN_MEMORY_PER_THREAD)
    return used, memory // used


def run_sort(
    src: Path, out: Path, work_dir: Path, per_thread: int, threads: int, *, name: str
) -> int:
    """Run samtools sort with its runs in a private folder; return how many runs it spilled."""
    private = Path(tempfile.mkdtemp(prefix=".sort.", dir=work_dir))
    try:
        args = ["-o", str(out), "-O", "bam", "--no-PG", "-m", str(per_thread)]
        args += ["-@", str(threads), "-T", str(private / "run"), str(src)]
        # samtools reports spilled runs only at htslib verbosity >= 2 (warnings).
        hint = partial(_failure_hint, src)
        run(pysam.sort, *args, name=name, stage="sort", what="sort", hint=hint, verbosity=2)
        messages = pysam.sort.get_messages() or ""
    finally:
        shutil.rmtree(private)
    if isinstance(messages, bytes):
        messages = messages.decode("utf-8", "surrogateescape")
    spilled = re.search(r"merging from (\d+) files", messages)
    return int(spilled.group(1)) if spilled else 0


def count(path: Path, *, threads: int, name: str, stage: str) -> int:
    """Count a SAM/BAM file's records with ``samtools view -c``."""
    args = ("-c", "-@", str(threads), str(path))
    hint = partial(_failure_hint, path)
    return int(run(pysam.view, *args, name=name, stage=stage, what="count", hint=hint).strip())


def flagstat(path: Path, *, threads: int, name: str) -> tuple[int, int]:
    """Return (records, mapped records) of a BAM in one multi-threaded pass."""
    args = ("-O", "tsv", "-@", str(threads), str(path))
    text = run(pysam.flagstat, *args, name=name, stage="sort", what="flagstat")
    # Rows are "QC-passed<TAB>QC-failed<TAB>label"; percentages share the layout, so pick by label.
    rows = dict((row[2], row[:2]) for row in (line.split("\t") for line in text.splitlines()))
    total, mapped = rows["total (QC-passed reads + QC-failed reads)"], rows["mapped"]
    return int(total[0]) + int(total[1]), int(mapped[0]) + int(mapped[1])


def _failure_hint(src: Path) -> str:
    """A BAM without @SQ whose records name contigs fails as "truncated file": say why."""
    try:
        with pysam.AlignmentFile(str(src), check_sq=False) as handle:
            no_sq = handle.is_bam and handle.nreferences == 0
    except (OSError, ValueError):
        no_sq = False
    if no_sq:
        return "the BAM has no @SQ header lines: restore its header (samtools reheader)"
    return "the input is malformed or truncated; fix or regenerate it"
