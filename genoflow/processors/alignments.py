"""Coordinate-sort and index SAM/BAM through pysam's bundled samtools.

Invariant: ``out_dir`` holds either a complete, verified output (record count equal to the
input's, BGZF end-of-file block present, ``SO:coordinate``) or nothing this module wrote.
Temporary sort files live in a private folder inside ``work_dir`` and are removed on every path.

pysam runs samtools in-process: its own stderr is captured into ``SamtoolsError.value``, but
htslib's log lines (``[E::sam_parse1] …``) go straight to the process's stderr, and some faults
(a RNAME missing from @SQ, a BGZF file cut at a block boundary) are only warnings there. Those
are checked here before samtools runs.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pysam

from genoflow.errors import ProcessingError
from genoflow.processors.base import Result, SortCheck, link_or_copy, require_output

SORT_VERSION = "1"
INDEX_VERSION = "1"
CSI_THRESHOLD = 1 << 29

# samtools sort refuses -m below 1 MiB; fewer, larger runs are better than many tiny ones, so
# threads are dropped before the per-thread share falls under this floor.
_MIN_MEMORY_PER_THREAD = 1 << 20
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_UNMAPPED_LAST = 1 << 62
_REGENERATE = "fix or regenerate the file"
_INCOMPLETE = "the copy is incomplete; fetch or regenerate the file"


def sort_alignments(
    src: str | Path,
    out_dir: str | Path,
    *,
    work_dir: str | Path,
    memory: int,
    threads: int,
    name: str,
) -> Result:
    """Coordinate-sort SAM (plain, gzip or BGZF) or BAM into ``out_dir/sorted.bam``.

    Records are ordered by @SQ order then position, unmapped reads last, exactly as
    ``samtools sort`` orders them; ``--no-PG`` keeps two builds of one input byte-identical.

    Args:
        src: the input SAM, SAM.gz (gzip or BGZF) or BAM, in any order.
        out_dir: existing folder that receives ``sorted.bam``.
        work_dir: existing folder for temporary sort runs (a private sub-folder is used).
        memory: total memory cap in bytes, shared by all sorting threads. Each thread gets at
            least 1 MiB (samtools' floor); when the cap is too small for ``threads`` of them,
            fewer threads are used.
        threads: sorting and compression threads.
        name: the file's user-facing name, used in errors.

    Returns:
        The sorted BAM, input and output record counts, and metadata.

    Raises:
        ValueError: ``memory`` below 1 MiB or ``threads`` below 1.
        ProcessingError: the input is empty, truncated or malformed, or records were lost.
    """
    src, out_dir, work_dir = Path(src), Path(out_dir), Path(work_dir)
    used_threads, per_thread = _sort_budget(memory, threads)
    kind, compression = _sniff(src, name=name, stage="sort")
    if kind == "sam":
        records_in = _scan_sam(src, compressed=compression != "none", name=name)
    else:
        records_in = _count(src, threads=used_threads, name=name, stage="sort")
    out = out_dir / "sorted.bam"
    try:
        spills = _run_sort(src, out, work_dir, per_thread, used_threads, name=name)
        _run(pysam.quickcheck, str(out), name=name, stage="sort", what="quickcheck")
        records_out, mapped = _flagstat(out, threads=used_threads, name=name)
        if records_out != records_in:
            lost = f"sorting changed the record count from {records_in} to {records_out}"
            raise ProcessingError(lost, file=name, stage="sort")
        with pysam.AlignmentFile(str(out), "rb", check_sq=False) as bam:
            contigs = bam.nreferences
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    metadata = {
        "input_format": kind,
        "input_compression": compression,
        "contigs": contigs,
        "mapped": mapped,
        "unmapped": records_out - mapped,
        "sort_order": "coordinate",
        "memory_per_thread": per_thread,
        "threads": used_threads,
        "spill_files": spills,
    }
    return Result([out], records_in, records_out, metadata)


def index_alignments(bam: str | Path, out_dir: str | Path, *, threads: int, name: str) -> Result:
    """Place a coordinate-sorted BAM in ``out_dir`` and index it (BAI, or CSI for long contigs).

    Args:
        bam: a coordinate-sorted BAM, typically another artifact's ``sorted.bam``.
        out_dir: existing folder that receives ``sorted.bam`` (hard link or copy) and its index.
        threads: indexing threads.
        name: the file's user-facing name, used in errors.

    Returns:
        ``[data, index]``, the record count read from the index, and ``{"index": "bai"|"csi"}``.

    Raises:
        ProcessingError: the BAM is truncated, not coordinate-sorted, or cannot be indexed.
    """
    bam, out_dir = Path(bam), Path(out_dir)
    _require_bgzf_eof(bam, name=name, stage="index")
    header = _read_header(bam, name=name, stage="index")
    order = header.get("HD", {}).get("SO")
    if order != "coordinate":
        raise _unsorted(f"the header declares SO:{order or 'none'}, not SO:coordinate", name)
    kind = "csi" if any(sq["LN"] >= CSI_THRESHOLD for sq in header.get("SQ", [])) else "bai"
    data, index = out_dir / "sorted.bam", out_dir / f"sorted.bam.{kind}"
    in_place = data.exists() and data.samefile(bam)
    try:
        if not in_place:
            link_or_copy(bam, data)
        args = ["-c"] if kind == "csi" else []
        args += ["-@", str(threads), str(data)]
        hint = "the records are not in coordinate order, or the BAM is corrupt: sort it again"
        _run(pysam.index, *args, name=name, stage="index", what="index", hint=hint)
        require_output(index, name=name, stage="index")
        _require_contig_order(data, name=name)
        stats = _run(pysam.idxstats, str(data), name=name, stage="index", what="idxstats")
        records = sum(int(f[2]) + int(f[3]) for f in (ln.split("\t") for ln in stats.splitlines()))
    except BaseException:
        index.unlink(missing_ok=True)
        if not in_place:
            data.unlink(missing_ok=True)
        raise
    return Result([data, index], records, records, {"index": kind})


def check_sorted(bam: str | Path, *, name: str) -> SortCheck:
    """Stream a BAM and prove it is coordinate-sorted, in bounded memory.

    Args:
        bam: the BAM to check.
        name: the file's user-facing name, used in errors.

    Returns:
        The record count, whether the order holds, and the first violation (header or record).

    Raises:
        ProcessingError: the BAM is truncated or cannot be read.
    """
    bam = Path(bam)
    _require_bgzf_eof(bam, name=name, stage="check")
    problem: str | None = None
    records = 0
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            order = handle.header.to_dict().get("HD", {}).get("SO")
            if order != "coordinate":
                problem = f"header declares SO:{order or 'none'}, not SO:coordinate"
            previous, last = -1, (-1, -1)
            for read in handle.fetch(until_eof=True):
                records += 1
                tid, start = read.reference_id, read.reference_start
                key = (tid << 32 | (start + 1)) if tid >= 0 else _UNMAPPED_LAST
                if key < previous and problem is None:
                    here, before = _locus(handle, tid, start), _locus(handle, *last)
                    problem = f"record {records} ({read.query_name}): {here} after {before}"
                previous, last = key, (tid, start)
    except (OSError, ValueError) as error:
        raise ProcessingError(f"cannot read the BAM: {error}", file=name, stage="check") from error
    return SortCheck(records=records, ordered=problem is None, problem=problem)


def query_index(folder_or_bam: str | Path, *, name: str) -> dict[str, int]:
    """Count records per @SQ contig through the index, plus ``"*"`` for unplaced unmapped reads.

    Args:
        folder_or_bam: a folder written by :func:`index_alignments`, or a BAM next to its index.
        name: the file's user-facing name, used in errors.

    Returns:
        Contig name to record count, in header order, ``"*"`` last; the values sum to the total.

    Raises:
        ProcessingError: there is no usable index, or a region query fails.
    """
    path = Path(folder_or_bam)
    bam = path / "sorted.bam" if path.is_dir() else path
    try:
        with pysam.AlignmentFile(str(bam), "rb") as handle:
            if not handle.has_index():
                missing = f"{bam.name} has no .bai or .csi index next to it"
                raise ProcessingError(missing, file=name, stage="query", hint="index it first")
            counts = {contig: handle.count(contig=contig) for contig in handle.references}
            counts["*"] = handle.count(contig="*")
    except (OSError, ValueError) as error:
        raise ProcessingError(f"region query failed: {error}", file=name, stage="query") from error
    return counts


def count_records(path: str | Path, *, threads: int = 1, name: str) -> int:
    """Count the non-header records of a SAM (plain or compressed) or BAM file.

    Args:
        path: the SAM, SAM.gz or BAM file.
        threads: decompression threads.
        name: the file's user-facing name, used in errors.

    Returns:
        The number of records (secondary and supplementary alignments included).

    Raises:
        ProcessingError: the file is truncated or cannot be parsed.
    """
    path = Path(path)
    _sniff(path, name=name, stage="count")
    return _count(path, threads=threads, name=name, stage="count")


def _sort_budget(memory: int, threads: int) -> tuple[int, int]:
    """Split the total cap into (threads, bytes per thread), keeping each share above the floor."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if memory < _MIN_MEMORY_PER_THREAD:
        raise ValueError(
            f"sort memory {memory} bytes is below the {_MIN_MEMORY_PER_THREAD} bytes "
            "one samtools sort thread needs"
        )
    used = min(threads, memory // _MIN_MEMORY_PER_THREAD)
    return used, memory // used


def _sniff(path: Path, *, name: str, stage: str) -> tuple[str, str]:
    """Return (``sam``|``bam``, ``none``|``gzip``|``bgzf``), rejecting empty or truncated input."""
    if not path.is_file():
        raise ProcessingError(f"input {path} does not exist", file=name, stage=stage)
    with open(path, "rb") as handle:
        head = handle.read(18)
    if not head:
        raise ProcessingError("the input is empty", file=name, stage=stage, hint=_REGENERATE)
    if head[:4] == b"CRAM":
        hint = "convert it to BAM (samtools view -b -T ref.fa) first"
        raise ProcessingError("CRAM is not supported", file=name, stage=stage, hint=hint)
    if head[:2] != b"\x1f\x8b":
        return "sam", "none"
    compression = "bgzf" if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" else "gzip"
    if compression == "bgzf":
        _require_bgzf_eof(path, name=name, stage=stage)
    try:
        with gzip.open(path, "rb") as handle:
            magic = handle.read(4)
    except (OSError, EOFError, zlib.error) as error:
        raise _bad_gzip(name, stage, error) from error
    return ("bam" if magic == b"BAM\x01" else "sam"), compression


def _require_bgzf_eof(path: Path, *, name: str, stage: str) -> None:
    """htslib only warns when a BGZF file lacks its end-of-file block; treat it as truncation."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(path.stat().st_size - len(_BGZF_EOF), 0))
            tail = handle.read()
    except OSError as error:
        raise ProcessingError(f"cannot read it: {error}", file=name, stage=stage) from error
    if tail != _BGZF_EOF:
        cut = "truncated BAM/BGZF file: the 28-byte end-of-file block is missing"
        raise ProcessingError(cut, file=name, stage=stage, hint=_INCOMPLETE)


def _scan_sam(src: Path, *, compressed: bool, name: str) -> int:
    """Count SAM records, refusing lines htslib would mangle silently or reject cryptically.

    htslib turns a RNAME or RNEXT missing from @SQ into "unmapped" with only a warning, so a
    mapped read would lose its position without an error; that is refused here.
    """
    names: set[bytes] = set()
    header_lines = records = 0
    opener = gzip.open if compressed else open
    try:
        with opener(src, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if line[:1] == b"@" and not records:
                    header_lines += 1
                    if line.startswith(b"@SQ\t"):
                        names.update(_sq_names(line))
                    continue
                fields = line.rstrip(b"\r\n").split(b"\t", 10)
                if len(fields) < 11:
                    raise _bad_line(name, number, "expected 11 tab-separated SAM fields")
                for label, ref in (("RNAME", fields[2]), ("RNEXT", fields[6])):
                    if ref not in names and ref not in (b"*", b"="):
                        shown = ref.decode("utf-8", "backslashreplace")
                        what = f"{label} {shown!r} is not an @SQ contig"
                        raise _bad_line(name, number, what, hint="add its @SQ header line")
                records += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise _bad_gzip(name, "sort", error) from error
    if not records and not header_lines:
        nothing = "the input holds neither a header nor records"
        raise ProcessingError(nothing, file=name, stage="sort", hint=_REGENERATE)
    return records


def _sq_names(line: bytes) -> list[bytes]:
    fields = line.rstrip(b"\r\n").split(b"\t")[1:]
    names = [field[3:] for field in fields if field.startswith(b"SN:")]
    for field in fields:
        if field.startswith(b"AN:"):
            names.extend(field[3:].split(b","))
    return names


def _run_sort(
    src: Path, out: Path, work_dir: Path, per_thread: int, threads: int, *, name: str
) -> int:
    """Run samtools sort with its runs in a private folder; return how many runs it spilled."""
    private = Path(tempfile.mkdtemp(prefix=".sort.", dir=work_dir))
    try:
        args = ["-o", str(out), "-O", "bam", "--no-PG", "-m", str(per_thread)]
        args += ["-@", str(threads), "-T", str(private / "run"), str(src)]
        # samtools reports spilled runs only at htslib verbosity >= 2 (warnings).
        hint = partial(_failure_hint, src)
        _run(pysam.sort, *args, name=name, stage="sort", what="sort", hint=hint, verbosity=2)
        messages = pysam.sort.get_messages() or ""
    finally:
        shutil.rmtree(private)
    if isinstance(messages, bytes):
        messages = messages.decode("utf-8", "surrogateescape")
    spilled = re.search(r"merging from (\d+) files", messages)
    return int(spilled.group(1)) if spilled else 0


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


def _count(path: Path, *, threads: int, name: str, stage: str) -> int:
    args = ("-c", "-@", str(threads), str(path))
    hint = partial(_failure_hint, path)
    return int(_run(pysam.view, *args, name=name, stage=stage, what="count", hint=hint).strip())


def _flagstat(path: Path, *, threads: int, name: str) -> tuple[int, int]:
    """Return (records, mapped records) of a BAM in one multi-threaded pass."""
    args = ("-O", "tsv", "-@", str(threads), str(path))
    text = _run(pysam.flagstat, *args, name=name, stage="sort", what="flagstat")
    # Rows are "QC-passed<TAB>QC-failed<TAB>label"; percentages share the layout, so pick by label.
    rows = dict((row[2], row[:2]) for row in (line.split("\t") for line in text.splitlines()))
    total, mapped = rows["total (QC-passed reads + QC-failed reads)"], rows["mapped"]
    return int(total[0]) + int(total[1]), int(mapped[0]) + int(mapped[1])


def _run(
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


def _read_header(bam: Path, *, name: str, stage: str) -> dict:
    try:
        with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as handle:
            return handle.header.to_dict()
    except (OSError, ValueError) as error:
        raise ProcessingError(f"cannot read its header: {error}", file=name, stage=stage) from error


def _locus(handle: pysam.AlignmentFile, tid: int, start: int) -> str:
    return f"{handle.get_reference_name(tid)}:{start + 1}" if tid >= 0 else "*"


def _require_contig_order(data: Path, *, name: str) -> None:
    """samtools index accepts whole contigs out of @SQ order; the index shows where each begins."""
    with pysam.AlignmentFile(str(data), "rb") as handle:
        previous, before = -1, ""
        for contig in (*handle.references, "*"):
            if next(handle.fetch(contig=contig), None) is None:
                continue
            if handle.tell() < previous:
                raise _unsorted(f"contig {contig} comes before {before}, against @SQ order", name)
            previous, before = handle.tell(), contig


def _unsorted(what: str, name: str) -> ProcessingError:
    hint = "sort the BAM by coordinate first"
    return ProcessingError(f"not coordinate-sorted: {what}", file=name, stage="index", hint=hint)


def _bad_line(name: str, number: int, what: str, *, hint: str = _REGENERATE) -> ProcessingError:
    return ProcessingError(f"line {number}: {what}", file=name, stage="sort", hint=hint)


def _bad_gzip(name: str, stage: str, error: BaseException) -> ProcessingError:
    what = f"truncated or corrupt gzip data: {error}"
    return ProcessingError(what, file=name, stage=stage, hint=_INCOMPLETE)
