"""Reading interval files (VCF, BED-like, GFF) line by line and validating each record.

Invariant: a line is bytes from the moment it is read to the moment it is written, never decoded,
so every byte a source carries (Latin-1 in an INFO field, say) reaches the output unchanged; and
memory stays bounded by one line, however large the input.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from genoflow.core.errors import FormatError, ProcessingError
from genoflow.core.formats import BGZF_EOF

Preset = Literal["vcf", "bed", "gff"]

MAX_POSITION = (1 << 63) - 1
MAX_LINE = 1 << 28
_CHUNK = 1 << 20
_CONTROL = re.compile(rb"[\x00-\x1f]")
_CONTIG_ID = re.compile(rb"^##contig=<(?:.*?,)?ID=([^,>]+)")
_TRACK = re.compile(rb"^(?:track|browser)(?:[ \t]|$)")
_PARSE_HINT = "fix the record (tab-separated columns, numeric positions) or regenerate the file"


@dataclass(frozen=True)
class FormatSpec:
    """What this module needs to know about one interval format.

    Attributes:
        suffix: the output's extension before ``.gz``.
        preset: the tabix preset whose column layout the format follows.
        min_columns: fewest tab-separated columns a data record may have.
        start_col: 0-based column of the start position (the sort key).
        end_col: 0-based column of the end position, or None (VCF derives it from REF/END).
        min_start: smallest valid start (GFF is 1-based; BED and VCF allow 0).
    """

    suffix: str
    preset: Preset
    min_columns: int
    start_col: int
    end_col: int | None
    min_start: int


_SPECS: dict[str, FormatSpec] = {
    "vcf": FormatSpec("vcf", "vcf", 8, 1, None, 0),
    "bed": FormatSpec("bed", "bed", 3, 1, 2, 0),
    "narrowPeak": FormatSpec("narrowPeak", "bed", 10, 1, 2, 0),
    "broadPeak": FormatSpec("broadPeak", "bed", 9, 1, 2, 0),
    "gff3": FormatSpec("gff3", "gff", 9, 3, 4, 1),
    "gtf": FormatSpec("gtf", "gff", 9, 3, 4, 1),
    "bigBed": FormatSpec("bed", "bed", 3, 1, 2, 0),
}


def spec_for(fmt: str, *, name: str) -> FormatSpec:
    """Return the facts for ``fmt`` (a canonical format name such as ``narrowPeak``).

    Raises:
        FormatError: when ``fmt`` is not an interval format.
    """
    try:
        return _SPECS[fmt]
    except KeyError:
        known = ", ".join(_SPECS)
        raise FormatError(f"{fmt!r} is not an interval format ({known})", file=name) from None


def is_bgzf(head: bytes) -> bool:
    """Whether ``head`` (a file's first 16 bytes) starts a BGZF block: gzip with a BC subfield."""
    return head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"


class LineSource:
    """The lines of a plain, gzip or BGZF file, decompressed by magic bytes and streamed.

    Lines come without their ``\\n``; a ``\\r`` before it is dropped too and counted in
    :attr:`crlf_lines`. Corrupt or truncated compression raises :class:`ProcessingError`.
    """

    def __init__(self, path: str | Path, *, name: str, stage: str) -> None:
        self.path = Path(path)
        self.name = name
        self.stage = stage
        self.crlf_lines = 0

    def _fail(self, message: str) -> ProcessingError:
        hint = "the file is incomplete or corrupt: download or regenerate it"
        return ProcessingError(message, file=self.name, stage=self.stage, hint=hint)

    def _open(self) -> BinaryIO:
        with open(self.path, "rb") as probe:
            head = probe.read(16)
            if head[:2] != b"\x1f\x8b":
                return open(self.path, "rb")
            if is_bgzf(head):
                probe.seek(0, 2)
                probe.seek(max(probe.tell() - len(BGZF_EOF), 0))
                if probe.read() != BGZF_EOF:
                    raise self._fail("truncated BGZF: the 28-byte end-of-file block is missing")
        return gzip.open(self.path, "rb")

    def __iter__(self) -> Iterator[bytes]:
        with self._open() as handle:
            try:
                while raw := handle.readline(MAX_LINE):
                    if raw[-1:] == b"\n":
                        raw = raw[:-1]
                    elif len(raw) == MAX_LINE:
                        raise self._fail(f"a line is longer than {MAX_LINE} bytes")
                    if raw[-1:] == b"\r":
                        raw = raw[:-1]
                        self.crlf_lines += 1
                    yield raw
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise self._fail(f"cannot decompress: {exc}") from exc


class RecordReader:
    """Classifies lines as header or data and validates data records for one format.

    VCF state (``##contig`` order, the ``#CHROM`` line) is learnt from the header lines passed to
    :meth:`observe_header`, so a reader is used for one file, top to bottom.
    """

    def __init__(self, fmt: str, *, name: str, stage: str = "parse") -> None:
        self.spec = spec_for(fmt, name=name)
        self.name = name
        self.stage = stage
        self.contigs: dict[bytes, int] = {}
        self.seen_contigs: set[bytes] = set()
        self.saw_chrom_line = False
        self._split = self.spec.min_columns
        self._bed = self.spec.preset == "bed"

    def error(self, lineno: int, reason: str) -> ProcessingError:
        """A parse error for line ``lineno``, naming the file and the stage."""
        return ProcessingError(
            f"line {lineno}: {reason}", file=self.name, stage=self.stage, hint=_PARSE_HINT
        )

    def is_header(self, line: bytes) -> bool:
        """Whether ``line`` is a header or comment line rather than a record."""
        first = line[:1]
        if first == b"#":
            return True
        return self._bed and first in (b"t", b"b") and _TRACK.match(line) is not None

    def is_fasta_start(self, line: bytes) -> bool:
        """Whether ``line`` is GFF3's ``##FASTA``, after which no features follow."""
        return self.spec.suffix == "gff3" and line.rstrip() == b"##FASTA"

    def observe_header(self, lineno: int, line: bytes) -> None:
        """Learn what a VCF header line tells: contig order, and that ``#CHROM`` was seen."""
        if self.spec.preset != "vcf":
            return
        if line.startswith(b"#CHROM"):
            if self.saw_chrom_line:
                raise self.error(lineno, "a second #CHROM line")
            self.saw_chrom_line = True
        elif line.startswith(b"##contig="):
            if self.saw_chrom_line:
                raise self.error(lineno, "##contig line after the #CHROM line")
            match = _CONTIG_ID.match(line)
            if match is None:
                raise self.error(lineno, "##contig line without an ID")
            self.contigs.setdefault(match.group(1), len(self.contigs))

    def parse(self, lineno: int, line: bytes) -> tuple[bytes, int, int]:
        """Validate a data record and return its contig, start and end.

        The start is the format's own (0-based for BED, 1-based for GFF and VCF POS); the end is
        the exclusive 0-based end tabix will index (VCF: from REF's length or INFO ``END``).

        Raises:
            ProcessingError: with the line number and the reason the record is invalid.
        """
        spec = self.spec
        fields = line.split(b"\t", self._split)
        if len(fields) < spec.min_columns:
            raise self.error(
                lineno,
                f"{len(fields)} tab-separated columns, a {spec.suffix} record needs "
                f"at least {spec.min_columns}",
            )
        contig = fields[0]
        if contig not in self.seen_contigs:
            self.check_contig(lineno, contig)
        start = self._position(lineno, fields[spec.start_col], "start")
        if start < spec.min_start:
            raise self.error(lineno, f"start {start} is below {spec.min_start}")
        if spec.end_col is None:
            return contig, start, vcf_end(start, fields)
        end = self._position(lineno, fields[spec.end_col], "end")
        if end < start:
            raise self.error(lineno, f"end {end} is before start {start}")
        return contig, start, end

    def check_contig(self, lineno: int, contig: bytes) -> None:
        """Validate a contig once, the first time a record names it, and remember it.

        Raises:
            ProcessingError: the name is empty or holds a control character, or (VCF) the
                record comes before ``#CHROM`` or names a contig the ``##contig`` lines lack.
        """
        if not contig or _CONTROL.search(contig):
            raise self.error(lineno, f"invalid contig name {show(contig)}")
        if self.spec.preset == "vcf":
            if not self.saw_chrom_line:
                raise self.error(lineno, "record before the #CHROM header line (no VCF header)")
            if self.contigs and contig not in self.contigs:
                reason = f"contig {show(contig)} is not in the header's ##contig lines"
                raise self.error(lineno, reason)
        self.seen_contigs.add(contig)

    def _position(self, lineno: int, field: bytes, what: str) -> int:
        # isdigit() first: int() alone would accept " 5", "+5" and "1_000".
        if field.isdigit() and (value := int(field)) <= MAX_POSITION:
            return value
        if field[:1] == b"-" and field[1:].isdigit():
            raise self.error(lineno, f"negative {what} {show(field)}")
        raise self.error(lineno, f"{what} is not an integer in 0..2^63-1: {show(field)}")


def vcf_end(pos: int, fields: list[bytes]) -> int:
    """The 0-based exclusive end tabix indexes for a VCF record: REF's span, or INFO ``END``."""
    end = pos - 1 + len(fields[3])
    info = fields[7]
    if b"END=" in info:
        for item in info.split(b";"):
            if item.startswith(b"END=") and item[4:].isdigit():
                end = max(end, int(item[4:]))
    return end


class HeaderSpill:
    """Header lines in output order, spilled to a file so a comment-heavy input stays small.

    A VCF's ``#CHROM`` line is held apart so that comment lines moved up from among the records
    land before it, where a VCF header allows them.

    Attributes:
        line_skip: how many leading lines of the output tabix must skip so that it also skips
            the header lines that do not start with ``#`` (BED ``track`` and ``browser``).
    """

    def __init__(self, spill: BinaryIO, *, vcf: bool) -> None:
        self._spill = spill
        self._vcf = vcf
        self._written = 0
        self.chrom_line: bytes | None = None
        self.line_skip = 0

    def add(self, line: bytes) -> None:
        """Append one header line (without its newline)."""
        if self._vcf and line.startswith(b"#CHROM"):
            self.chrom_line = line
            return
        self._spill.write(line + b"\n")
        self._written += 1
        if line[:1] != b"#":
            self.line_skip = self._written

    def write_to(self, out: Any) -> None:
        """Write every header line, in output order, to ``out``."""
        self._spill.seek(0)
        while chunk := self._spill.read(_CHUNK):
            out.write(chunk)
        if self.chrom_line is not None:
            out.write(self.chrom_line + b"\n")


def show(value: bytes | None) -> str:
    """A field for an error message: decoded with backslash escapes, quoted, at most 60 chars."""
    return repr((value or b"").decode("utf-8", "backslashreplace")[:60])
