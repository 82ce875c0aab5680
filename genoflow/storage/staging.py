"""Staging a source: copy the upstream bytes into a private folder and prove their md5.

Readers are chosen by URI scheme (:data:`READERS`), so remote schemes plug in beside the local
one. A copy whose md5 or size is wrong is deleted at once and never used; the next replica is
tried, and only when every replica fails does staging fail, naming each reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from genoflow.checksums import CHUNK
from genoflow.errors import ChecksumError, GenoflowError, SourceError, StorageError, redact

# Writes that fail because the disk (or the process's file size limit, or a quota) is full.
_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

Opener = Callable[[str], AbstractContextManager[BinaryIO]]


@contextmanager
def open_local(uri: str) -> Iterator[BinaryIO]:
    """Open a local path or ``file://`` URI for reading."""
    path = unquote(urlsplit(uri).path) if uri.startswith("file://") else uri
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below, after errors map
    except FileNotFoundError as exc:
        raise SourceError("file not found", file=path) from exc
    except IsADirectoryError as exc:
        raise SourceError("is a folder, not a file", file=path) from exc
    except PermissionError as exc:
        raise SourceError("permission denied", file=path) from exc
    with handle:
        yield handle


READERS: dict[str, Opener] = {"": open_local, "file": open_local}


def local_path(uri: str) -> str | None:
    """The filesystem path of a local URI (plain path or ``file://``), else None."""
    if uri.startswith("file://"):
        return unquote(urlsplit(uri).path)
    return None if "://" in uri else uri


def confined(roots: Sequence[Path]) -> Opener:
    """An opener for local files that refuses anything resolving outside ``roots``.

    The check is made on the file actually opened (``/proc/self/fd``), after every symlink is
    resolved, so a symlink or a swapped path component cannot lead outside the roots.
    """
    allowed = [Path(os.path.realpath(root)) for root in roots]

    @contextmanager
    def open_confined(uri: str) -> Iterator[BinaryIO]:
        with open_local(uri) as handle:
            real = Path(os.path.realpath(f"/proc/self/fd/{handle.fileno()}"))
            if not any(real == root or root in real.parents for root in allowed):
                listed = ", ".join(str(root) for root in allowed)
                raise SourceError(
                    f"resolves outside the allowed roots ({listed})",
                    file=local_path(uri),
                    hint="move the file under the manifest's folder, or list its folder in "
                    "GENOFLOW_ALLOWED_ROOTS",
                )
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
) -> Path:
    """Copy one replica to ``dest`` while hashing it; delete the copy unless md5 and size match.

    Raises:
        SourceError: the replica cannot be read.
        ChecksumError: the bytes read do not match ``md5`` or ``size``.
    """
    digest = hashlib.md5()
    written = 0
    try:
        opener = confined(roots) if roots is not None and local_path(uri) else _reader(uri)
        with opener(uri) as source, open(dest, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
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
                hint="free space under GENOFLOW_HOME (its cache and work folders), then run again",
            ) from exc
        raise
    problem = None
    if size is not None and written != size:
        problem = f"size is {written} bytes, the manifest says {size}"
    elif digest.hexdigest() != md5:
        problem = f"md5 is {digest.hexdigest()}, the manifest says {md5}"
    if problem:
        dest.unlink(missing_ok=True)
        # The URI goes in the message: the error redacts ``file`` again, and a redacted query
        # there would swallow whatever text followed the URI.
        raise ChecksumError(f"{problem} (read from {redact(uri)})", file=name)
    return dest


def stage(
    uris: Sequence[str],
    dest: Path,
    *,
    md5: str,
    size: int | None,
    name: str,
    roots: Mapping[str, Sequence[Path]] | None = None,
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

    Raises:
        ChecksumError: when every replica read but none verified.
        SourceError: when no replica could be read.
    """
    failures: list[GenoflowError] = []
    for uri in uris:
        try:
            allowed = None if roots is None else roots.get(uri, ())
            copied = copy_verified(uri, dest, md5=md5, size=size, name=name, roots=allowed)
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
