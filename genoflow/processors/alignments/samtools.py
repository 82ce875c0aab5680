"""Call samtools — Debian's on PATH, or pysam's bundled one in-process — as the engine says.

Invariant: every call returns samtools' output or raises a
:class:`~genoflow.core.errors.ProcessingError` that names the file, the stage and what samtools
said; htslib's process-wide verbosity is the same after a call as before it; a samtools child is
killed and reaped on every path; and ``samtools sort``'s temporary runs live in a private folder
that is removed on every path.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from subprocess import PIPE

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.processors.commands import Child
from genoflow.processors.engine import Tools

__all__ = ["count", "idxstats", "index", "quickcheck", "run", "sort_budget", "sort_indexed"]

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


def sort_indexed(
    src: Path,
    out: Path,
    index: Path,
    work_dir: Path,
    per_thread: int,
    threads: int,
    *,
    tools: Tools,
    name: str,
    records_in: Callable[[], int],
) -> tuple[int, int]:
    """Sort into ``out`` writing ``index`` in the same pass (``--write-index``).

    ``records_in`` (the input's record count) runs while ``samtools sort`` runs when sort is a
    child process, and before it when it is pysam's in-process samtools. Sort's temporary runs
    live in a private folder inside ``work_dir``, removed on every path.

    Returns:
        (records counted by ``records_in``, runs sort spilled to disk).

    Raises:
        ProcessingError: stage ``sort``, from ``records_in`` first, else from sort.
    """
    private = Path(tempfile.mkdtemp(prefix=".sort.", dir=work_dir))
    try:
        args = ["-o", f"{out}##idx##{index}", "--write-index", "-O", "bam", "--no-PG"]
        args += ["-m", str(per_thread), "-@", str(threads), "-T", str(private / "run"), str(src)]
        hint = partial(_failure_hint, src)
        if tools.cli:
            argv = [tools.paths["samtools"], "sort", *args]
            common = {"name": name, "stage": "sort", "scratch": private, "hint": hint}
            with Child(argv, what="samtools sort", **common) as sorter:
                counted = records_in()
                messages = sorter.finish()
        else:
            counted = records_in()
            # samtools reports spilled runs only at htslib verbosity >= 2 (warnings).
            run(pysam.sort, *args, name=name, stage="sort", what="sort", hint=hint, verbosity=2)
            messages = pysam.sort.get_messages() or ""
    finally:
        shutil.rmtree(private)
    if isinstance(messages, bytes):
        messages = messages.decode("utf-8", "surrogateescape")
    spilled = re.search(r"merging from (\d+) files", messages)
    return counted, int(spilled.group(1)) if spilled else 0


def index(bam: Path, *, csi: bool, threads: int, tools: Tools, name: str, scratch: Path) -> None:
    """Index a coordinate-sorted BAM in place (``.bai``, or ``.csi`` when asked)."""
    args = [*(["-c"] if csi else []), "-@", str(threads), str(bam)]
    hint = "the records are not in coordinate order, or the BAM is corrupt: sort it again"
    if not tools.cli:
        run(pysam.index, *args, name=name, stage="index", what="index", hint=hint)
        return
    argv = [tools.paths["samtools"], "index", *args]
    with Child(
        argv, what="samtools index", name=name, stage="index", scratch=scratch, hint=hint
    ) as job:
        job.finish()


def quickcheck(bam: Path, *, name: str, stage: str) -> None:
    """Prove genoflow's own BAM output whole with ``samtools quickcheck -u``.

    ``-u`` accepts a header without @SQ lines: an unaligned BAM (every read unmapped, as GATK
    writes them) is valid. The file checked is genoflow's output, still in a private folder
    that is gone by the time anybody reads the message, so the message names the output by
    its file name and does not blame the input.

    Raises:
        ProcessingError: quickcheck found the output incomplete or unreadable.
    """
    previous = pysam.get_verbosity()
    try:
        said = pysam.quickcheck("-u", "-v", str(bam))
    except pysam.SamtoolsError as error:
        said = str(error.value).split("stderr=", 1)[-1].strip() or str(error.value)
    finally:
        pysam.set_verbosity(previous)  # quickcheck sets htslib's global verbosity to 0
    said = (said or "").replace(str(bam), bam.name).strip()
    if said:
        raise ProcessingError(
            f"the {bam.name} genoflow wrote failed samtools quickcheck: {said}",
            file=name,
            stage=stage,
            hint="this is genoflow's output, not the input: check free space and the disk "
            "under GENOFLOW_HOME and run again; report it if it happens again",
        )


def idxstats(bam: Path, *, name: str, stage: str) -> tuple[int, int]:
    """(records, mapped records) of an indexed BAM, read from its index alone."""
    text = run(pysam.idxstats, str(bam), name=name, stage=stage, what="idxstats")
    rows = [line.split("\t") for line in text.splitlines()]
    mapped = sum(int(row[2]) for row in rows)
    return mapped + sum(int(row[3]) for row in rows), mapped


def count(
    path: Path,
    *,
    threads: int,
    name: str,
    stage: str,
    tools: Tools | None = None,
    scratch: Path | None = None,
) -> int:
    """Count a SAM/BAM file's records with ``samtools view -c``.

    It runs as a child process when ``tools`` is the htslib-cli engine and ``scratch`` (a folder
    for its stderr) is given, else in-process through pysam.
    """
    args = ("-c", "-@", str(threads), str(path))
    hint = partial(_failure_hint, path)
    if tools is None or not tools.cli or scratch is None:
        text = run(pysam.view, *args, name=name, stage=stage, what="count", hint=hint)
        return int(text.strip())
    argv = [tools.paths["samtools"], "view", *args]
    common = {"name": name, "stage": stage, "scratch": scratch, "hint": hint}
    with Child(argv, what="samtools count", stdout=PIPE, **common) as job:
        text = job.stdout.read().decode("ascii", "replace")
        job.finish()
    return int(text.strip())


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
