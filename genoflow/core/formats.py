"""Format names, families and detection by file name and by content.

Invariant: :func:`detect` returns a canonical format only when the file's first bytes agree
with it — a BAM is BGZF with ``BAM\\1`` inside, a bigBed/bigWig carries its magic, and every text
format is text (plain, gzip or BGZF). Detection reads at most the first 64 KiB and the last
28 bytes of a file; it never decompresses more than one buffer's worth.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from genoflow.core.errors import FormatError, ProcessingError

Format = Literal[
    "sam", "bam", "vcf", "bed", "gff3", "gtf", "narrowPeak", "broadPeak", "bigBed", "csv", "tsv",
    "bigWig",
]  # fmt: skip
Family = Literal["alignments", "intervals", "passthrough"]
Container = Literal["bgzf", "gzip", "plain", "bigbed", "bigwig", "empty"]

FORMATS: tuple[str, ...] = get_args(Format)

FAMILY: dict[str, Family] = {
    "sam": "alignments",
    "bam": "alignments",
    **dict.fromkeys(
        ("vcf", "bed", "gff3", "gtf", "narrowPeak", "broadPeak", "bigBed"), "intervals"
    ),
    **dict.fromkeys(("csv", "tsv", "bigWig"), "passthrough"),
}

FORMAT_SUFFIX: dict[str, str] = {
    **{fmt: fmt for fmt in FORMATS},
    "bigBed": "bb",
    "bigWig": "bw",
}

TABIX_PRESET: dict[str, str] = {
    "vcf": "vcf",
    **dict.fromkeys(("bed", "narrowPeak", "broadPeak", "bigBed"), "bed"),
    "gff3": "gff",
    "gtf": "gff",
}

_ALIASES: dict[str, str] = {
    **{fmt.lower(): fmt for fmt in FORMATS},
    "gff": "gff3",
    "bb": "bigBed",
    "bw": "bigWig",
}
_BED_N = re.compile(r"bed(\d+)(\+\d+)?")  # UCSC's "bed6", "bed6+4" type names

_SUFFIXES: dict[str, str] = {
    **{fmt.lower(): fmt for fmt in FORMATS},
    "gff": "gff3",
    "bb": "bigBed",
    "bw": "bigWig",
}
_COMPRESSION_SUFFIXES = (".gz", ".bgz", ".bgzf")

_HEAD = 1 << 16
# The empty BGZF block that ends a complete file (the SAM/BAM specification's EOF marker).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_BBI_MAGICS: tuple[tuple[Container, int], ...] = (("bigbed", 0x8789F2EB), ("bigwig", 0x888FFC26))
# Bytes that do not occur in text: C0 controls except TAB, LF, VT, FF, CR and ESC, plus DEL.
_CONTROL = bytes([*range(0, 9), *range(14, 27), *range(28, 32), 127])


def normalize_format(value: str) -> str:
    """Return the canonical spelling of a format name, case-insensitively.

    Accepts the canonical names and the usual aliases: ``gff`` (gff3), ``bb``/``bigbed``,
    ``bw``/``bigwig``, and UCSC's ``bed3`` … ``bed12`` (optionally ``+N``) for bed.

    Raises:
        FormatError: the value names no known format.
    """
    key = value.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    match = _BED_N.fullmatch(key)
    if match and 3 <= int(match.group(1)) <= 12:
        return "bed"
    raise FormatError(
        f"unknown format {value.strip()[:60]!r}; known formats: {', '.join(FORMATS)}",
        stage="detect",
    )


def family_of(fmt: str) -> Family:
    """Return how a format is processed: ``alignments``, ``intervals`` or ``passthrough``.

    Raises:
        FormatError: the value names no known format.
    """
    return FAMILY[normalize_format(fmt)]


def format_from_name(name: str) -> str | None:
    """Guess a format from a file name, ignoring case and one ``.gz``/``.bgz``/``.bgzf``.

    Returns:
        The canonical format, or None when the suffix is not a known one.
    """
    lowered = name.lower()
    for compression in _COMPRESSION_SUFFIXES:
        if lowered.endswith(compression):
            lowered = lowered[: -len(compression)]
            break
    stem, dot, suffix = lowered.rpartition(".")
    if not dot or not stem:
        return None
    return _SUFFIXES.get(suffix)


@dataclass(frozen=True)
class Sniffed:
    """What a file's first bytes say about it.

    Attributes:
        container: ``bgzf``, ``gzip``, ``plain``, ``bigbed``, ``bigwig`` or ``empty``.
        is_bam: BGZF whose decompressed data starts with ``BAM\\1``.
        bgzf_eof: for BGZF only, whether the file ends with the 28-byte EOF block.
        binary: the (decompressed) first 64 KiB hold NUL or too many control bytes to be text.
        problem: a compressed stream that cannot be inflated, described; None when fine.
    """

    container: Container
    is_bam: bool = False
    bgzf_eof: bool | None = None
    binary: bool = False
    problem: str | None = None

    def warning(self, name: str) -> str | None:
        """Describe a harmless mismatch between ``name`` and the content, for callers to log."""
        if self.container == "gzip" and name.lower().endswith((".bgz", ".bgzf")):
            return f"{name} is named as BGZF but is plain gzip; it will be recompressed"
        return None


def sniff(path: str | Path) -> Sniffed:
    """Inspect a file's magic bytes (and its last 28 bytes when it is BGZF).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
        if not head:
            return Sniffed("empty")
        magic = head[:4]
        for container, number in _BBI_MAGICS:
            # UCSC readers accept either byte order and swap when the magic reads reversed.
            if len(magic) == 4 and number in (
                int.from_bytes(magic, "little"),
                int.from_bytes(magic, "big"),
            ):
                return Sniffed(container, binary=True)
        if head[:2] != b"\x1f\x8b":
            return Sniffed("plain", binary=_looks_binary(head))
        text, problem = _inflate(head)
        if not _has_bgzf_header(head):
            return Sniffed("gzip", binary=_looks_binary(text), problem=problem)
        size = handle.seek(0, 2)
        handle.seek(max(size - len(BGZF_EOF), 0))
        eof = handle.read() == BGZF_EOF
    is_bam = text.startswith(b"BAM\x01")
    return Sniffed(
        "bgzf", is_bam=is_bam, bgzf_eof=eof, binary=is_bam or _looks_binary(text), problem=problem
    )


def _has_bgzf_header(head: bytes) -> bool:
    """Check the gzip header for FLG.FEXTRA and a ``BC`` subfield of length 2 (SAM spec 4.1)."""
    if len(head) < 18 or head[:3] != b"\x1f\x8b\x08" or not head[3] & 0x04:
        return False
    xlen = int.from_bytes(head[10:12], "little")
    extra = head[12 : 12 + xlen]
    offset = 0
    while offset + 4 <= len(extra):
        slen = int.from_bytes(extra[offset + 2 : offset + 4], "little")
        if extra[offset : offset + 2] == b"BC" and slen == 2 and offset + 6 <= len(extra):
            return True
        offset += 4 + slen
    return False


def _inflate(raw: bytes) -> tuple[bytes, str | None]:
    """Inflate the start of a (possibly multi-member) gzip stream, up to 64 KiB of output."""
    out = bytearray()
    data = raw
    while data and len(out) < _HEAD:
        inflater = zlib.decompressobj(wbits=31)
        try:
            out += inflater.decompress(data, _HEAD - len(out))
        except zlib.error as exc:
            return bytes(out), f"corrupt gzip data ({exc})"
        if not inflater.eof:
            break  # the buffer ends inside this member, or the output cap is reached
        data = inflater.unused_data
    return bytes(out), None


def _looks_binary(sample: bytes) -> bool:
    if b"\0" in sample:
        return True
    odd = len(sample) - len(sample.translate(None, _CONTROL))
    return odd * 10 > len(sample)


def _describe(sniffed: Sniffed) -> str:
    if sniffed.container in ("empty", "bigbed", "bigwig"):
        return {"empty": "empty", "bigbed": "bigBed", "bigwig": "bigWig"}[sniffed.container]
    if sniffed.is_bam:
        return "BAM"
    packing = {"plain": "plain ", "gzip": "gzip-compressed ", "bgzf": "BGZF-compressed "}
    kind = "binary data" if sniffed.binary else "text"
    return f"{packing[sniffed.container]}{kind}"


def _content_matches(fmt: str, sniffed: Sniffed) -> bool:
    if fmt == "bam":
        return sniffed.is_bam
    if fmt in ("bigBed", "bigWig"):
        return sniffed.container == fmt.lower()
    return sniffed.container in ("plain", "gzip", "bgzf") and not sniffed.binary


def detect(path: str | Path, *, name: str, declared: str | None = None) -> str:
    """Return a file's canonical format, confirmed by its content.

    The declared format (the manifest's ``format`` column) wins over the name's suffix.

    Args:
        path: the file to inspect.
        name: the user-facing file name, used for the suffix and in messages.
        declared: the format the manifest declares, if any.

    Raises:
        FormatError: no format is known, the file is empty, or its content contradicts the
            format (a BAM that is not BGZF+BAM, a bigBed without its magic, binary "text"…).
    """
    if declared and declared.strip():
        fmt, origin = normalize_format(declared), "the manifest's format column"
    else:
        fmt, origin = format_from_name(name), "the file name"
    if fmt is None:
        raise FormatError(
            f"unknown format: the name has no known suffix ({', '.join(FORMATS)}) and the "
            "manifest declares none",
            file=name,
            stage="detect",
        )
    sniffed = sniff(path)
    if sniffed.container == "empty":
        raise FormatError(
            "file is empty", file=name, stage="detect", hint="re-export or replace it"
        )
    if sniffed.problem:
        raise FormatError(sniffed.problem, file=name, stage="detect", hint="re-download it")
    if not _content_matches(fmt, sniffed):
        found = _describe(sniffed)
        raise FormatError(
            f"{origin} says {fmt} but the content is {found}",
            file=name,
            stage="detect",
            hint=_suggest(found),
        )
    return fmt


def _suggest(found: str) -> str | None:
    canonical = {"BAM": "bam", "bigBed": "bigBed", "bigWig": "bigWig"}.get(found)
    if canonical:
        return f"it is a {found} file: set the manifest's format column to {canonical}"
    return None


def verify_bgzf_complete(path: str | Path, *, name: str, stage: str) -> None:
    """Fail unless ``path`` is BGZF and ends with the 28-byte BGZF EOF block.

    htslib reads a BGZF file cut at a block boundary with only a warning, so a truncated
    download would otherwise pass as a shorter, valid file.

    Raises:
        ProcessingError: the file is not BGZF, or its EOF block is missing.
    """
    sniffed = sniff(path)
    if sniffed.container != "bgzf":
        raise ProcessingError(
            f"not BGZF-compressed (content is {_describe(sniffed)})", file=name, stage=stage
        )
    if not sniffed.bgzf_eof:
        raise ProcessingError(
            "truncated BGZF: no EOF block — the file was cut short; re-download it",
            file=name,
            stage=stage,
            hint="compare the source's size and md5 with the manifest",
        )
