"""BGZF compression and input decompression, through ``bgzip`` or pysam.

Invariant: a sink's bytes depend only on the bytes written to it and on the engine (``bgzip``
splits blocks by input size, not by how writes were cut), so a rebuild is byte-identical; a sink
that fails, or is left without :meth:`close`, has its output removed by its context manager.
:func:`decompress_to` either writes the whole decompressed input or raises: a truncated gzip or
BGZF input is never mistaken for a short one, and no more bytes are written than the expansion
cap (:mod:`~genoflow.processors.limits`) allows.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from typing import IO, Protocol

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.core.formats import BGZF_EOF
from genoflow.processors.commands import Child, pump, write_all
from genoflow.processors.engine import Tools
from genoflow.processors.intervals.records import is_bgzf
from genoflow.processors.limits import ExpansionGuard, bgzf_expanded_size

__all__ = [
    "Sink",
    "compression_of",
    "decompress_to",
    "open_sink",
    "read_decompressed",
    "require_eof",
]

_INCOMPLETE = "the file is incomplete or corrupt: download or regenerate it"
_CHUNK = 1 << 20


class Sink(Protocol):
    """Where uncompressed text goes to become one BGZF file."""

    def write(self, data: bytes) -> None: ...


@contextlib.contextmanager
def open_sink(
    out: Path, tools: Tools, *, threads: int, name: str, stage: str, scratch: Path
) -> Iterator[Sink]:
    """Open a BGZF writer on ``out``: ``bgzip -@ threads`` or pysam's single-threaded BGZFile.

    The file is complete when the ``with`` block ends without an exception; on any exception
    (including the compressor's own failure) ``out`` is removed.

    Raises:
        ProcessingError: ``bgzip`` failed; the message carries its exit status and stderr.
    """
    try:
        if tools.cli:
            argv = [tools.paths["bgzip"], "-@", str(threads), "-c"]
            common = {"what": "bgzip", "name": name, "stage": stage, "scratch": scratch}
            with open(out, "wb") as file, Child(argv, stdin=PIPE, stdout=file, **common) as child:
                yield _PipeSink(child)
                child.finish()
        else:
            with pysam.BGZFile(str(out), "wb") as bgzf:
                yield bgzf
    except BaseException:
        out.unlink(missing_ok=True)
        raise


class _PipeSink:
    """Writes to a tool's stdin; a tool that died turns the broken pipe into its own error."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self._fd = child.stdin.fileno()

    def write(self, data: bytes) -> None:
        try:
            write_all(self._fd, data)
        except BrokenPipeError as exc:
            raise self._child.failure() from exc


def compression_of(path: Path) -> str:
    """``none``, ``gzip`` or ``bgzf``, from the file's magic bytes."""
    with open(path, "rb") as probe:
        head = probe.read(16)
    if head[:2] != b"\x1f\x8b":
        return "none"
    return "bgzf" if is_bgzf(head) else "gzip"


def decompress_to(
    src: Path,
    dst: Path,
    tools: Tools,
    *,
    threads: int,
    name: str,
    scratch: Path,
    guard: ExpansionGuard | None = None,
) -> Path:
    """Write ``src`` decompressed into ``dst``; return ``src`` itself when it is not compressed.

    BGZF goes through ``bgzip -d -@ threads`` (after its end-of-file block is checked, since a
    BGZF file cut at a block boundary reads as complete); plain gzip through Python's zlib, which
    notices truncation that ``bgzip -d`` lets pass. Every decompressed byte is counted against
    ``guard`` as it is written, and a BGZF file whose blocks declare more is refused first.

    Raises:
        ProcessingError: stage ``decompress`` (``sort`` for the expansion cap); ``dst`` is
            removed.
    """
    kind = compression_of(src)
    if kind == "none":
        return src
    try:
        with open(dst, "wb") as out:
            sink = _GuardedWriter(out.fileno(), guard)
            if kind == "bgzf":
                require_eof(src, name=name, stage="decompress")
                if guard is not None:
                    guard.check_declared(bgzf_expanded_size(src))
            if kind == "bgzf" and tools.cli:
                argv = [tools.paths["bgzip"], "-d", "-c", "-@", str(threads), str(src)]
                common = {"name": name, "stage": "decompress", "scratch": scratch}
                with Child(argv, what="bgzip -d", hint=_INCOMPLETE, stdout=PIPE, **common) as job:
                    pump(job.stdout, sink.write, count=False)
                    job.finish()
            else:
                _gunzip(src, sink, name)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return dst


class _GuardedWriter:
    """Writes decompressed bytes to a descriptor, counting them against the expansion cap."""

    def __init__(self, fd: int, guard: ExpansionGuard | None) -> None:
        self._fd, self._guard = fd, guard

    def write(self, data: bytes) -> None:
        if self._guard is not None:
            self._guard.add(len(data))
        write_all(self._fd, data)


def require_eof(src: Path, *, name: str, stage: str) -> None:
    """htslib only warns when a BGZF file lacks its end-of-file block: treat it as truncation.

    Raises:
        ProcessingError: the last 28 bytes of ``src`` are not the BGZF end-of-file block.
    """
    with open(src, "rb") as probe:
        probe.seek(0, 2)
        probe.seek(max(probe.tell() - len(BGZF_EOF), 0))
        if probe.read() != BGZF_EOF:
            missing = "truncated BGZF: the 28-byte end-of-file block is missing"
            raise ProcessingError(missing, file=name, stage=stage, hint=_INCOMPLETE)


def _gunzip(src: Path, out: _GuardedWriter, name: str) -> None:
    try:
        with gzip.open(src, "rb") as handle:
            while data := handle.read(_CHUNK):
                out.write(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ProcessingError(
            f"cannot decompress: {exc}", file=name, stage="decompress", hint=_INCOMPLETE
        ) from exc


@contextlib.contextmanager
def read_decompressed(
    gz: Path, tools: Tools, *, threads: int, name: str, stage: str, scratch: Path
) -> Iterator[IO[bytes]]:
    """A readable stream of a gzip or BGZF file's uncompressed bytes.

    With ``htslib-cli`` the bytes come from ``bgzip -d -@ threads``, whose exit status is checked
    when the block ends after reading everything; a caller that stops early just stops it. Check a
    BGZF file's end-of-file block (:func:`require_eof`) first: ``bgzip -d`` does not notice a
    file cut at a block boundary.

    Raises:
        ProcessingError: the data cannot be decompressed.
    """
    if not tools.cli:
        try:
            with gzip.open(gz, "rb") as handle:
                yield handle
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ProcessingError(
                f"cannot decompress: {exc}", file=name, stage=stage, hint=_INCOMPLETE
            ) from exc
        return
    argv = [tools.paths["bgzip"], "-d", "-c", "-@", str(threads), str(gz)]
    common = {"what": "bgzip -d", "name": name, "stage": stage, "scratch": scratch}
    with Child(argv, stdout=PIPE, hint=_INCOMPLETE, **common) as child:
        yield child.stdout
        # A reader that stopped early wants no more: leaving the block stops bgzip.
        if not child.stdout.read(1):
            child.finish()
