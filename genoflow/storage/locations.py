"""Locations: places that hold copies of files, behind one small interface.

A location is named, belongs to a deployment (machines sharing that storage), and answers for
objects by their exact path below its root: ``stat`` (never a prefix listing), ``get`` into a
local file with verification, ``put`` (optionally only if absent — the commit-marker
precondition), ``delete``. Local disk is implemented here; GCS and upstream URIs implement the
same interface in their own modules.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from genoflow.core.checksums import CHUNK, NotRegularFileError, open_regular
from genoflow.core.errors import StorageError


class DataType(enum.StrEnum):
    """How a replica holds its data (StreamFlow's data types)."""

    PRIMARY = "PRIMARY"
    SYMBOLIC_LINK = "SYMBOLIC_LINK"
    INVALID = "INVALID"


class AlreadyExists(StorageError):
    """A ``put(..., if_absent=True)`` found the object already there (another writer won)."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a location knows about one object without reading it.

    Attributes:
        size: bytes.
        md5: lower-case hex md5 when the store keeps one (GCS ``md5Hash``), else None.
        crc32c: base64 crc32c when the store keeps one, else None.
        generation: the store's identity of this version (GCS generation; for local files
            ``dev:inode:mtime_ns``).
    """

    size: int
    md5: str | None = None
    crc32c: str | None = None
    generation: str | None = None


def safe_relpath(path: str) -> PurePosixPath:
    """Validate a path below a location's root: relative, no ``..``, no empty parts.

    Raises:
        StorageError: the path could escape the root.
    """
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(p in ("", ".", "..") for p in path.split("/")):
        raise StorageError(
            f"refusing path {path!r}: it could escape the location's root",
            stage="locate",
            hint="paths inside a location come from cache keys; report this as a bug",
        )
    return pure


class Location(abc.ABC):
    """One place holding copies, e.g. this node's cache or a ``gs://bucket/prefix``."""

    kind: str = "abstract"

    def __init__(self, name: str, root: str, *, deployment: str, is_local: bool) -> None:
        self.name = name
        self.root = root
        self.deployment = deployment
        self.is_local = is_local

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.root!r}, {self.deployment!r})"

    @abc.abstractmethod
    def uri(self, path: str) -> str:
        """A URI to show a person (never carrying a credential)."""

    @abc.abstractmethod
    def stat(self, path: str) -> ObjectInfo | None:
        """The object at exactly ``path``, or None when it does not exist."""

    @abc.abstractmethod
    def get(self, path: str, dest: Path) -> ObjectInfo:
        """Copy the object into local file ``dest``; a failed or unverified copy is deleted."""

    @abc.abstractmethod
    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        """Store local file ``src`` at ``path``; with ``if_absent``, raise AlreadyExists."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove the object at ``path`` (missing is not an error)."""


class LocalLocation(Location):
    """A folder on this node's filesystem (the node's cache, or a shared mount)."""

    kind = "local"

    def __init__(self, name: str, root: str | Path, *, deployment: str) -> None:
        super().__init__(name, str(Path(root).resolve()), deployment=deployment, is_local=True)

    def path(self, path: str) -> Path:
        return Path(self.root, *safe_relpath(path).parts)

    def uri(self, path: str) -> str:
        return str(self.path(path))

    def stat(self, path: str) -> ObjectInfo | None:
        try:
            st = self.path(path).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(size=st.st_size, generation=f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}")

    def get(self, path: str, dest: Path) -> ObjectInfo:
        source = self.path(path)
        try:
            _copy(source, dest)
        except FileNotFoundError as exc:
            raise StorageError("replica is missing", file=str(source), stage="transfer") from exc
        except NotRegularFileError as exc:
            raise StorageError(
                f"replica {exc.strerror}",
                file=str(source),
                stage="transfer",
                hint="remove it and invalidate this replica; another will be used",
            ) from None
        return ObjectInfo(size=dest.stat().st_size)

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
        try:
            _copy(src, temp)
            if if_absent:
                try:
                    os.link(temp, target)  # fails with EEXIST: the local "create" precondition
                except FileExistsError as exc:
                    raise AlreadyExists("already published", file=str(target)) from exc
            else:
                os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        info = self.stat(path)
        assert info is not None  # just written
        return info

    def delete(self, path: str) -> None:
        self.path(path).unlink(missing_ok=True)


def _copy(src: Path, dest: Path) -> None:
    try:
        # A FIFO or device planted where a replica should be is refused, never waited on.
        with open_regular(src) as reader, open(dest, "wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def md5_of(file: Path) -> str:
    """The md5 of a local file (for verifying a transfer on arrival)."""
    digest = hashlib.md5()
    with open(file, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
