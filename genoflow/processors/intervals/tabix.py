"""Tabix-index sorted BGZF interval files, with ``tabix`` or pysam.

Invariant: :func:`index_intervals` leaves in ``out_dir`` either the data file together with its
complete index (TBI, or CSI once any record ends at or beyond 2^29) or nothing it wrote. An
index is built only after every record of its data file has been read and validated — by
:func:`~genoflow.processors.intervals.sort_intervals`, which writes the index beside its output,
or here — and an index found beside the data is adopted only when it is at least as new as the
data file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.processors import engine, native_stderr
from genoflow.processors.base import Result, link_or_copy, require_output
from genoflow.processors.commands import Child
from genoflow.processors.engine import Tools
from genoflow.processors.intervals.bgzf import read_decompressed, require_eof
from genoflow.processors.intervals.checks import check_sorted, query_index
from genoflow.processors.intervals.chunks import (
    ChunkValidator,
    Irregular,
    read_chunks,
    scan_header,
    worth_vectorising,
)
from genoflow.processors.intervals.records import FormatSpec, LineSource, RecordReader, is_bgzf

__all__ = [
    "CSI_THRESHOLD",
    "check_sorted",
    "index_facts",
    "index_intervals",
    "query_index",
    "write_index",
]

CSI_THRESHOLD = 1 << 29
"""TBI cannot hold a position at or beyond 2^29: such files get a CSI index."""

_SUFFIXES = (".tbi", ".csi")


def index_intervals(
    gz: str | Path, out_dir: str | Path, *, fmt: str, name: str, threads: int = 2
) -> Result:
    """Copy (or hard-link) a sorted BGZF file into ``out_dir`` with its tabix index.

    When ``gz`` has an index beside it (as :func:`sort_intervals` writes) that is at least as new
    as ``gz``, that index is adopted: linked or copied, with the record count and the lines to
    skip read from the index itself (:func:`index_facts`), which ``sort_intervals`` checked
    against the records it wrote. Otherwise every record is read and validated, the kind (TBI,
    or CSI when a record ends at or beyond 2^29) and the number of leading non-``#`` header
    lines to skip (BED ``track``/``browser``) are derived from the file, and the index is built.

    Args:
        gz: a BGZF file written by :func:`sort_intervals`.
        out_dir: existing folder that receives ``gz``'s copy and its ``.tbi`` or ``.csi``.
        fmt: the canonical format name ``gz`` was sorted as.
        name: the file's user-facing name, used in errors.
        threads: decompression threads.

    Returns:
        Files ``[data, index]``, the record count, and metadata ``index`` (tbi/csi), ``preset``,
        ``line_skip``, ``index_built_by`` (``sort`` or ``index``), ``engine`` and
        ``engine_versions``.

    Raises:
        ValueError: ``gz`` is already inside ``out_dir``.
        ProcessingError: stage ``index``; nothing is left in ``out_dir``.
    """
    gz, out_dir = Path(gz), Path(out_dir)
    reader = RecordReader(fmt, name=name, stage="index")
    data = out_dir / gz.name
    if data.exists() and data.samefile(gz):
        raise ValueError(f"{gz} is already in {out_dir}: index into another folder")
    tools = engine.choose("bgzip", "tabix", name=name, stage="index")
    options = {"tools": tools, "threads": threads, "scratch": out_dir}
    try:
        _require_bgzf(gz, reader)
        built = _fresh_index(gz)
        counted = index_facts(built, name=name, stage="index") if built else None
        if built is not None and counted is not None:
            (line_skip, records), messages = counted, ""
            index = link_or_copy(built, out_dir / built.name)
            link_or_copy(gz, data)
        else:
            line_skip, records, max_end = _scan(gz, fmt, name=name, **options)
            link_or_copy(gz, data)
            index = data.with_name(data.name + (".csi" if max_end >= CSI_THRESHOLD else ".tbi"))
            messages = write_index(
                data, reader.spec, line_skip=line_skip, csi=index.suffix == ".csi",
                tools=tools, name=name, stage="index", scratch=out_dir,
            )  # fmt: skip
        require_output(index, name=name, stage="index")
    except BaseException:
        for path in (data, *(data.with_name(data.name + s) for s in _SUFFIXES)):
            path.unlink(missing_ok=True)
        raise
    metadata: dict[str, Any] = {
        "index": index.suffix[1:],
        "preset": reader.spec.preset,
        "line_skip": line_skip,
        "index_built_by": "sort" if counted is not None else "index",
        **tools.metadata(),
    }
    if messages:
        metadata["tabix_messages"] = messages
    return Result([data, index], records, records, metadata)


def write_index(
    data: Path,
    spec: FormatSpec,
    *,
    line_skip: int,
    csi: bool,
    tools: Tools,
    name: str,
    stage: str,
    scratch: Path,
) -> str:
    """Build ``data``'s ``.tbi`` (or ``.csi``) beside it; return what the indexer reported.

    Raises:
        ProcessingError: the indexer failed; the message carries its own reason.
    """
    if not tools.cli:
        return _pysam_index(data, spec, line_skip=line_skip, csi=csi, name=name, stage=stage)
    argv = [tools.paths["tabix"], "-f", *(["-C"] if csi else [])]
    if spec.preset == "vcf":
        argv += ["-p", "vcf"]
    else:
        assert spec.end_col is not None, "only VCF derives its end"
        argv += ["-s", "1", "-b", str(spec.start_col + 1), "-e", str(spec.end_col + 1)]
        argv += ["-0"] if spec.preset == "bed" else []
        argv += ["-S", str(line_skip)]
    with Child([*argv, str(data)], what="tabix", name=name, stage=stage, scratch=scratch) as job:
        return job.finish()


def _require_bgzf(gz: Path, reader: RecordReader) -> None:
    with open(gz, "rb") as probe:
        if not is_bgzf(probe.read(16)):
            hint = "index the output of sort_intervals, which is BGZF"
            raise ProcessingError("not BGZF-compressed", file=reader.name, stage="index", hint=hint)
    require_eof(gz, name=reader.name, stage="index")


def _fresh_index(gz: Path) -> Path | None:
    """The one index beside ``gz`` written no earlier than ``gz`` itself, if there is one."""
    found = [p for p in (Path(f"{gz}{s}") for s in _SUFFIXES) if p.is_file()]
    if len(found) != 1 or found[0].stat().st_mtime_ns < gz.stat().st_mtime_ns:
        return None
    return found[0]


def index_facts(index: Path, *, name: str, stage: str) -> tuple[int, int]:
    """(lines to skip, records) that a tabix index (``.tbi`` or ``.csi``) says it holds.

    See :func:`index_contigs`.
    """
    line_skip, contigs = index_contigs(index, name=name, stage=stage)
    return line_skip, sum(records for _, records in contigs)


def index_contigs(index: Path, *, name: str, stage: str) -> tuple[int, list[tuple[str, int]]]:
    """(lines to skip, [(contig, records)]) that a tabix index (``.tbi`` or ``.csi``) holds,
    contigs in the order the indexer met them in the data file.

    htslib stores, for every contig, a pseudo-bin whose second chunk is the number of records
    the indexer read (``n_mapped``; tabix counts every record as mapped), and the tabix
    configuration, whose ``skip`` is the number of leading lines the indexer skipped.

    Raises:
        ProcessingError: the index cannot be read or is not a tabix index.
    """
    try:
        with gzip.open(index, "rb") as handle:
            data = handle.read()
        return _parse_index(data)
    except (OSError, EOFError, zlib.error, struct.error, ValueError) as exc:
        raise ProcessingError(
            f"cannot read the index {index.name}: {exc}",
            file=name,
            stage=stage,
            hint="remove the index so that it is rebuilt",
        ) from exc


def _parse_index(data: bytes) -> tuple[int, list[tuple[str, int]]]:
    if data[:4] == b"TBI\x01":
        conf, depth = 8, 5
        n_ref = struct.unpack_from("<i", data, 4)[0]
        offset, loffset = 36 + struct.unpack_from("<i", data, 32)[0], 0
    elif data[:4] == b"CSI\x01":
        depth, l_aux = struct.unpack_from("<ii", data, 8)
        conf, loffset = 16, 8
        if l_aux < 28:
            raise ValueError("a CSI index without a tabix configuration")
        n_ref = struct.unpack_from("<i", data, 16 + l_aux)[0]
        offset = 20 + l_aux
    else:
        raise ValueError("not a TBI or CSI index")
    line_skip, l_nm = struct.unpack_from("<ii", data, conf + 20)
    names = [raw.decode() for raw in data[conf + 28 : conf + 28 + l_nm].split(b"\0")[:n_ref]]
    meta_bin = ((1 << (3 * (depth + 1))) - 1) // 7 + 1
    counts = [0] * n_ref
    for ref in range(n_ref):
        (n_bin,) = struct.unpack_from("<i", data, offset)
        offset += 4
        for _ in range(n_bin):
            (bin_,) = struct.unpack_from("<I", data, offset)
            (n_chunk,) = struct.unpack_from("<i", data, offset + 4 + loffset)
            offset += 8 + loffset
            if bin_ == meta_bin:
                if n_chunk != 2:
                    raise ValueError("a malformed pseudo-bin")
                counts[ref] = struct.unpack_from("<Q", data, offset + 16)[0]
            offset += 16 * n_chunk
        if conf == 8:  # TBI: the linear index follows each contig's bins
            (n_intv,) = struct.unpack_from("<i", data, offset)
            offset += 4 + 8 * n_intv
    if offset > len(data):
        raise ValueError("the index is truncated")
    if len(names) != n_ref:
        raise ValueError("the index names fewer contigs than it indexes")
    return line_skip, list(zip(names, counts, strict=True))


def _scan(
    gz: Path, fmt: str, *, name: str, tools: Tools, threads: int, scratch: Path
) -> tuple[int, int, int]:
    """Validate every record; return (line_skip, records, max_end)."""
    reader = RecordReader(fmt, name=name, stage="index")
    skip = [0]

    def header_line(lineno: int, line: bytes) -> None:
        reader.observe_header(lineno, line)
        if line[:1] != b"#":
            skip[0] = lineno

    common = {"threads": threads, "name": reader.name, "stage": "index", "scratch": scratch}
    validator = ChunkValidator(reader, vectorised=worth_vectorising(3 * gz.stat().st_size))
    with read_decompressed(gz, tools, **common) as handle:
        try:
            first = scan_header(handle, reader, header_line)
            if first is None:
                return skip[0], 0, 0
            chunks = read_chunks(handle, prefix=first[0], first=first[1], name=name, stage="index")
            for chunk, lineno, lines in chunks:
                validator.feed(chunk, lineno, lines)
        except Irregular:
            # Not what sort_intervals writes: let the line-by-line scan say what is wrong.
            return _scan_lines(gz, RecordReader(fmt, name=name, stage="index"))
    return skip[0], validator.records, validator.max_end


def _scan_lines(gz: Path, reader: RecordReader) -> tuple[int, int, int]:
    """The line-by-line scan: tabix skips ``#`` lines but not track/browser lines."""
    line_skip = records = max_end = 0
    for lineno, line in enumerate(LineSource(gz, name=reader.name, stage="index"), 1):
        if reader.is_header(line):
            if records:
                raise reader.error(lineno, "header line after the records: sort the file first")
            reader.observe_header(lineno, line)
            if line[:1] != b"#":
                line_skip = lineno
            continue
        records += 1
        max_end = max(max_end, reader.parse(lineno, line)[2])
    return line_skip, records, max_end


def _pysam_index(
    data: Path, spec: FormatSpec, *, line_skip: int, csi: bool, name: str, stage: str
) -> str:
    """Run pysam's tabix indexer, turning its stderr into the error message or the result."""
    if spec.preset == "vcf":
        layout: dict[str, Any] = {"preset": "vcf"}
    else:
        # pysam ignores line_skip whenever a preset is given: pass the preset's own layout.
        layout = {
            "seq_col": 0,
            "start_col": spec.start_col,
            "end_col": spec.end_col,
            "zerobased": spec.preset == "bed",
            "line_skip": line_skip,
        }
    failure: OSError | None = None
    with native_stderr.capture(data.parent, drop=native_stderr.everything) as log:
        try:
            pysam.tabix_index(str(data), force=True, keep_original=True, csi=csi, **layout)
        except OSError as exc:  # pysam's is bare: the reason is what htslib printed
            failure = exc
    if failure is not None:
        reason = log.summary() or str(failure)
        raise ProcessingError(
            f"tabix indexing failed: {reason}", file=name, stage=stage
        ) from failure
    return log.summary()
