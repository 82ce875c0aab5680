"""Staging a source: copy the upstream bytes into a private folder and prove their md5 (and
their sha256, when one is declared), both hashed in the one pass that copies the bytes.

Readers are chosen by URI scheme (:data:`READERS`), so remote schemes plug in beside the local
one. A copy whose md5 or size is wrong is deleted at once and never used; the next replica is
tried, and only when every replica fails does staging fail, naming each reason.

A local source is opened non-blocking and judged by ``fstat`` of the descriptor opened: only a
regular file is read, so a FIFO or a device can neither hang a run nor feed it forever. What can
be known without reading (the file's size, a remote body's announced length) is checked against
the manifest's size and the free disk space before the first byte is copied, and no copy reads
more than one byte past the size expected.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from genoflow.core.checksums import CHUNK, NotRegularFileError, open_regular
from genoflow.core.errors import ChecksumError, GenoflowError, SourceError, StorageError, redact

# Writes that fail because the disk (or the process's file size limit, or a quota) is full.
_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

_FREE_SPACE_HINT = (
    "free space under GENOFLOW_HOME (its cache and work folders), or point GENOFLOW_HOME at a "
    "larger disk, then run again"
)

Opener = Callable[[str], AbstractContextManager[BinaryIO]]


@contextmanager
def open_local(uri: str) -> Iterator[BinaryIO]:
    """Open a local path or ``file://`` URI for reading: a regular file only, never blocking.

    Raises:
        SourceError: missing, unreadable, or not a regular file (a folder, FIFO, device…).
    """
    with open_source_file(uri, None) as handle:
        yield handle


def open_source_file(uri: str, roots: Sequence[Path] | None) -> BinaryIO:
    """Open a local source without blocking; judge the descriptor opened (roots, then kind)."""
    path = local_path(uri) or uri
    check = None if roots is None else _confinement(uri, roots)
    try:
        return open_regular(path, check=check)
    except FileNotFoundError as exc:
        raise SourceError("file not found", file=path) from exc
    except NotRegularFileError as exc:
        raise SourceError(
            f"{exc.strerror}: only regular files are staged, and nothing was read",
            file=path,
            hint="point the manifest's uri at a regular file (copy a pipe's or a device's "
            "data into one first)",
        ) from None
    except PermissionError as exc:
        raise SourceError("permission denied", file=path) from exc
    except OSError as exc:
        raise SourceError(f"cannot open it: {exc.strerror or exc}", file=path) from exc


def _confinement(uri: str, roots: Sequence[Path]) -> Callable[[int], None]:
    allowed = [Path(os.path.realpath(root)) for root in roots]

    def check(fd: int) -> None:
        real = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
        if not any(real == root or root in real.parents for root in allowed):
            listed = ", ".join(str(root) for root in allowed)
            raise SourceError(
                f"resolves outside the allowed roots ({listed})",
                file=local_path(uri),
                hint="move the file under the manifest's folder, or list its folder in "
                "GENOFLOW_ALLOWED_ROOTS",
            )

    return check


READERS: dict[str, Opener] = {"": open_local, "file": open_local}


def local_path(uri: str) -> str | None:
    """The filesystem path of a local URI (plain path or ``file://``), else None."""
    if uri.startswith("file://"):
        return unquote(urlsplit(uri).path)
    return None if "://" in uri else uri


def confined(roots: Sequence[Path]) -> Opener:
    """An opener for local files that refuses anything resolving outside ``roots``.

    The check is made on the file actually opened (``/proc/self/fd``), after every symlink is
    resolved, so a symlink or a swapped path component cannot lead outside the roots. It comes
    before the check of the file's kind, so nothing about a file outside the roots is told.
    """

    @contextmanager
    def open_confined(uri: str) -> Iterator[BinaryIO]:
        with open_source_file(uri, roots) as handle:
            yield handle

    return open_confined


def _reader(uri: str) -> Opener:
    scheme = urlsplit(uri).scheme if "://" in uri else ""
    try:
        return READERS[scheme]
    except KeyError:
        raise SourceError(
            f"no reader for {scheme}:// URIs yet", file=redact(uri), hint="use a local path"
        ) from None


def copy_verified(
    uri: str,
    dest: Path,
    *,
    md5: str,
    size: int | None,
    name: str,
    roots: Sequence[Path] | None = None,
    sha256: str | None = None,
) -> Path:
    """Copy one replica to ``dest`` while hashing it; delete the copy unless md5 and size match,
    and sha256 too when one is given (hashed in the same pass, never by reading the copy again).

    Before a byte is copied, the replica's size as known without reading it (``fstat`` of a
    local file, a remote reader's announced length) is compared with ``size``, and the free
    space under ``dest`` with the bytes to come. The copy never reads more than one byte past
    the size expected, so a file that grows while it is read fails instead of running on.

    Raises:
        SourceError: the replica cannot be read, or is not a regular file.
        ChecksumError: the replica's size, md5 or sha256 is not ``size``, ``md5`` or
            ``sha256``.
        StorageError: the disk under ``dest`` has no room for the copy.
    """
    digests = [hashlib.md5()] if sha256 is None else [hashlib.md5(), hashlib.sha256()]
    written = 0
    expected: int | None = None
    try:
        opener = confined(roots) if roots is not None and local_path(uri) else _reader(uri)
        with opener(uri) as source:
            expected = _precheck(source, uri, dest, size=size, name=name)
            with open(dest, "wb") as out:
                for chunk in _chunks(source, None if expected is None else expected + 1):
                    for each in digests:
                        each.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise StorageError(
                f"cannot write the staged copy after {written} bytes: {exc.strerror}",
                file=name,
                stage="stage",
                hint=_FREE_SPACE_HINT,
            ) from exc
        raise
    seen = [each.hexdigest() for each in digests]
    problem, hint = _mismatch(written, expected, size=size, md5=md5, sha256=sha256, seen=seen)
    if problem:
        dest.unlink(missing_ok=True)
        # The URI goes in the message: the error redacts ``file`` again, and a redacted query
        # there would swallow whatever text followed the URI.
        raise ChecksumError(f"{problem} (read from {redact(uri)})", file=name, hint=hint)
    return dest


def _mismatch(
    written: int,
    expected: int | None,
    *,
    size: int | None,
    md5: str,
    sha256: str | None,
    seen: list[str],
) -> tuple[str | None, str | None]:
    """Why a finished copy is refused, and what to do (None: the default hint), or (None, None).

    ``seen`` holds the copy's md5, then its sha256 when ``sha256`` is given.
    """
    if expected is not None and written > expected:
        said = "the manifest says" if size is not None else "it had when opened"
        return f"it grew past {expected} bytes (the size {said}) while being read", None
    if size is not None and written != size:
        return f"size is {written} bytes, the manifest says {size}", None
    if seen[0] != md5:
        return f"md5 is {seen[0]}, the manifest says {md5}", None
    if sha256 is not None and seen[1] != sha256:
        return (
            f"sha256 is {seen[1]}, the manifest says {sha256}, though its md5 "
            f"{md5} matches; nothing was kept",
            "check the file against its source, then correct the manifest's sha256 (or empty "
            "it) or replace the file, and run again",
        )
    return None, None


def known_size(source: BinaryIO) -> int | None:
    """The size of what ``source`` will yield, known without reading it, else None.

    A local regular file answers with ``fstat`` of its descriptor; a remote reader may announce
    its body's length as a ``length`` attribute of itself or of its raw stream (HTTP
    Content-Length, a GCS object's size).
    """
    try:
        found = os.fstat(source.fileno())
    except (AttributeError, OSError, ValueError):
        found = None
    if found is not None and stat.S_ISREG(found.st_mode):
        return found.st_size
    for reader in (source, getattr(source, "raw", None)):
        length = getattr(reader, "length", None)
        if isinstance(length, int) and length >= 0:
            return length
    return None


def require_space(folder: Path, needed: int, *, name: str) -> None:
    """Refuse to start writing ``needed`` bytes under ``folder`` when the disk has less free.

    Raises:
        StorageError: (stage ``stage``) the disk holding ``folder`` has too little free space.
    """
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise StorageError(
            f"staging needs {needed:,} bytes but only {free:,} are free on the disk holding "
            f"{folder}; nothing was copied",
            file=name,
            stage="stage",
            hint=_FREE_SPACE_HINT,
        )


def _precheck(source: BinaryIO, uri: str, dest: Path, *, size: int | None, name: str) -> int | None:
    """Check what can be checked before reading; return the most bytes the copy may take."""
    known = known_size(source)
    if size is not None and known is not None and known != size:
        raise ChecksumError(
            f"size is {known} bytes, the manifest says {size} (read from {redact(uri)}; "
            "nothing was copied)",
            file=name,
        )
    expected = size if size is not None else known
    if expected is not None:
        require_space(dest.parent, expected, name=name)
    return expected


def _chunks(source: BinaryIO, cap: int | None) -> Iterator[bytes]:
    """``source``'s bytes in chunks, at most ``cap`` of them in all (None: to the end)."""
    taken = 0
    while cap is None or taken < cap:
        chunk = source.read(CHUNK if cap is None else min(CHUNK, cap - taken))
        if not chunk:
            return
        taken += len(chunk)
        yield chunk


def stage(
    uris: Sequence[str],
    dest: Path,
    *,
    md5: str,
    size: int | None,
    name: str,
    roots: Mapping[str, Sequence[Path]] | None = None,
    sha256: str | None = None,
) -> tuple[Path, str]:
    """Stage the first replica that reads and verifies; return the staged path and its URI.

    Args:
        uris: replica URIs, best first.
        dest: the file to write (its folder must exist).
        md5: the expected lower-case hex md5.
        size: the expected size in bytes, when known.
        name: the source's name, for messages.
        roots: for local URIs, the folders each may be read from (symlinks resolved); a local
            URI missing from the mapping is refused. None: no confinement.
        sha256: the expected lower-case hex sha256, when one is declared: verified too.

    Raises:
        ChecksumError: when every replica read but none verified.
        SourceError: when no replica could be read.
    """
    failures: list[GenoflowError] = []
    for uri in uris:
        try:
            allowed = None if roots is None else roots.get(uri, ())
            copied = copy_verified(
                uri, dest, md5=md5, size=size, name=name, roots=allowed, sha256=sha256
            )
            return copied, uri
        except (SourceError, ChecksumError) as exc:
            failures.append(exc)
    if not failures:
        raise SourceError("no replica is registered for this source", file=name)
    if len(failures) == 1:
        raise failures[0]
    kind = ChecksumError if all(isinstance(f, ChecksumError) for f in failures) else SourceError
    reasons = "; ".join(f"{f.file}: {f.message}" for f in failures)
    raise kind(f"no replica verified ({reasons})", file=name)
