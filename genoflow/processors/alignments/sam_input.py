"""Sniff a SAM/BAM input and pre-scan SAM text before samtools sees it.

Invariant: an input that passes :func:`sniff` exists, is not empty, is not CRAM and, when it is
BGZF, ends with the BGZF end-of-file block; a SAM that passes :func:`scan_sam` has 11 fields on
every record line and names only @SQ contigs (or ``*``/``=``) in RNAME and RNEXT. Each refusal is
a :class:`~genoflow.core.errors.ProcessingError` naming the file, the stage and the fix.

These checks exist because htslib only *warns* about some faults — a RNAME missing from @SQ
becomes "unmapped", a BGZF file cut at a block boundary reads as complete — and its warnings go
straight to the process's stderr, where no caller sees them.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from genoflow.core.errors import ProcessingError
from genoflow.core.formats import BGZF_EOF
from genoflow.processors.limits import ExpansionGuard

__all__ = ["require_bgzf_eof", "scan_sam", "sniff", "sq_lengths"]

_REGENERATE = "fix or regenerate the file"
_INCOMPLETE = "the copy is incomplete; fetch or regenerate the file"
_GUARD_EVERY = 1 << 14  # records between two looks at the decompressed byte count


def sniff(path: Path, *, name: str, stage: str) -> tuple[str, str]:
    """Return (``sam``|``bam``, ``none``|``gzip``|``bgzf``), rejecting empty or truncated input.

    Raises:
        ProcessingError: the input is missing, empty, CRAM, a truncated BGZF file, or corrupt gzip.
    """
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
        require_bgzf_eof(path, name=name, stage=stage)
    try:
        with gzip.open(path, "rb") as handle:
            magic = handle.read(4)
    except (OSError, EOFError, zlib.error) as error:
        raise _bad_gzip(name, stage, error) from error
    return ("bam" if magic == b"BAM\x01" else "sam"), compression


def require_bgzf_eof(path: Path, *, name: str, stage: str) -> None:
    """htslib only warns when a BGZF file lacks its end-of-file block; treat it as truncation.

    Raises:
        ProcessingError: the file cannot be read or its last 28 bytes are not the EOF block.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(max(path.stat().st_size - len(BGZF_EOF), 0))
            tail = handle.read()
    except OSError as error:
        raise ProcessingError(f"cannot read it: {error}", file=name, stage=stage) from error
    if tail != BGZF_EOF:
        cut = "truncated BAM/BGZF file: the 28-byte end-of-file block is missing"
        raise ProcessingError(cut, file=name, stage=stage, hint=_INCOMPLETE)


def scan_sam(src: Path, *, compressed: bool, name: str, guard: ExpansionGuard | None = None) -> int:
    """Count SAM records, refusing lines htslib would mangle silently or reject cryptically.

    htslib turns a RNAME or RNEXT missing from @SQ into "unmapped" with only a warning, so a
    mapped read would lose its position without an error; that is refused here. A compressed
    input's decompressed bytes are counted against ``guard`` as they stream by.

    Raises:
        ProcessingError: stage ``sort``; a short line, an unknown contig, corrupt gzip data, a
            file with neither header nor records, or more decompressed bytes than ``guard``
            allows.
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
                if guard is not None and not records % _GUARD_EVERY:
                    guard.reached(handle.tell())
            if guard is not None:
                guard.reached(handle.tell())
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise _bad_gzip(name, "sort", error) from error
    if not records and not header_lines:
        nothing = "the input holds neither a header nor records"
        raise ProcessingError(nothing, file=name, stage="sort", hint=_REGENERATE)
    return records


def sq_lengths(src: Path, *, compressed: bool, name: str) -> list[tuple[str, int]]:
    """(SN, LN) of every @SQ line of a SAM file's header, reading nothing past the header.

    Raises:
        ProcessingError: stage ``sort``; the gzip data ends or breaks inside the header.
    """
    contigs: list[tuple[str, int]] = []
    opener = gzip.open if compressed else open
    try:
        with opener(src, "rb") as handle:
            for line in handle:
                if line[:1] != b"@":
                    break
                if line.startswith(b"@SQ\t"):
                    fields = line.rstrip(b"\r\n").split(b"\t")
                    tags = {f[:3]: f[3:] for f in fields[1:]}
                    sn = tags.get(b"SN:", b"").decode("utf-8", "backslashreplace")
                    ln = tags.get(b"LN:", b"")
                    if ln.isdigit():
                        contigs.append((sn, int(ln)))
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise _bad_gzip(name, "sort", error) from error
    return contigs


def _sq_names(line: bytes) -> list[bytes]:
    fields = line.rstrip(b"\r\n").split(b"\t")[1:]
    names = [field[3:] for field in fields if field.startswith(b"SN:")]
    for field in fields:
        if field.startswith(b"AN:"):
            names.extend(field[3:].split(b","))
    return names


def _bad_line(name: str, number: int, what: str, *, hint: str = _REGENERATE) -> ProcessingError:
    return ProcessingError(f"line {number}: {what}", file=name, stage="sort", hint=hint)


def _bad_gzip(name: str, stage: str, error: BaseException) -> ProcessingError:
    what = f"truncated or corrupt gzip data: {error}"
    return ProcessingError(what, file=name, stage=stage, hint=_INCOMPLETE)
