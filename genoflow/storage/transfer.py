"""Moving artifacts between locations: the marker is read first and written last.

Invariants:
- an artifact exists at a location only when its ``genoflow.json`` marker does, checked by a
  ``stat`` of that exact object, never a listing;
- a source is trusted only once every file its marker lists matched that size and md5;
- a destination receives the data files first and the marker last — on local disk inside a
  private temp folder renamed into place, on object stores with a does-not-exist precondition
  on the marker — every arrived file is checked against the marker, and a failed copy is deleted.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from genoflow.core.checksums import md5_file
from genoflow.core.errors import ChecksumError, StorageError
from genoflow.storage import atomic
from genoflow.storage.locations import AlreadyExists, LocalLocation, Location, ObjectInfo
from genoflow.storage.marker import MARKER, FileEntry, Marker, content_checksum

# Filesystems that cannot hard-link (or not this many times) make a link transfer a copy.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class BadReplica(ChecksumError):
    """A replica proved wrong: its marker or a file is missing, damaged, or differs from it."""

    default_stage = "transfer"
    default_hint = "invalidate this replica and copy the artifact from another one"


@dataclass(frozen=True)
class Staged:
    """A source artifact read and verified: its marker and verified local copies of its files.

    ``in_place`` means ``files`` are the source's own files (a local source), so a destination on
    the same filesystem may hard-link them.
    """

    marker: Marker
    marker_file: Path
    files: dict[str, Path]
    in_place: bool

    @property
    def entries(self) -> list[FileEntry]:
        return self.marker.entries

    @property
    def checksum(self) -> str:
        return self.marker.checksum


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect` found: the marker and its object's generation (None when there is
    no readable marker), and the problems."""

    marker: Marker | None
    generation: str | None
    problems: list[str]


def marker_path(path: str) -> str:
    return f"{path}/{MARKER}"


def read_marker(location: Location, path: str, scratch: Path) -> tuple[Marker, Path, ObjectInfo]:
    """Read and check the marker of the artifact at ``path``.

    Returns:
        The parsed marker, a local copy of it (the file itself on local disk), and the marker
        object's info (its generation identifies this version of the artifact).

    Raises:
        BadReplica: there is no marker (so no artifact), or it is damaged.
    """
    where = location.uri(marker_path(path))
    info = location.stat(marker_path(path))
    if info is None:
        raise BadReplica(f"no {MARKER} here, so no artifact", file=where)
    if isinstance(location, LocalLocation):
        local = location.path(marker_path(path))
    else:
        local = scratch / f"{secrets.token_hex(4)}.{MARKER}"
        location.get(marker_path(path), local)
    try:
        marker = Marker.from_json(json.loads(local.read_bytes()))
        entries = marker.entries
        consistent = content_checksum(entries) == marker.checksum
    except FileNotFoundError as exc:
        raise BadReplica(f"{MARKER} vanished while being read", file=where) from exc
    except ValueError as exc:
        raise BadReplica(f"{MARKER} is damaged ({exc})", file=where) from exc
    except StorageError as exc:
        raise BadReplica(f"{MARKER} is damaged ({exc.message})", file=where) from exc
    if not consistent or not entries:
        raise BadReplica(f"{MARKER} lists no files or a checksum that is not theirs", file=where)
    if any("/" in e.name or e.name in ("", ".", "..", MARKER) for e in entries):
        raise BadReplica(f"{MARKER} names a file outside its folder", file=where)
    return marker, local, info


def stage(location: Location, path: str, scratch: Path, *, expected: str | None) -> Staged:
    """Read the source artifact at ``path`` and verify every file against its marker.

    Files of a local source are hashed where they are; others are downloaded into ``scratch``.

    Args:
        location: where the source replica is.
        path: its artifact folder within ``location``.
        scratch: a private local folder for downloads.
        expected: the checksum the registry holds for this artifact, when known.

    Raises:
        BadReplica: the marker or a file is missing, or differs from what it should be.
    """
    marker, marker_file, _ = read_marker(location, path, scratch)
    if expected is not None and marker.checksum != expected:
        raise BadReplica(
            f"holds content {marker.checksum}, the registry expects {expected}",
            file=location.uri(path),
        )
    files = {}
    for entry in marker.files:
        files[entry.name] = _stage_file(location, f"{path}/{entry.name}", entry, scratch)
    in_place = isinstance(location, LocalLocation)
    return Staged(marker, marker_file, files, in_place)


def _stage_file(location: Location, name: str, entry: FileEntry, scratch: Path) -> Path:
    problem = _stat_problem(entry, location.stat(name))
    if problem:
        raise BadReplica(f"{entry.name} {problem}", file=location.uri(name))
    if isinstance(location, LocalLocation):
        local = location.path(name)
    else:
        local = scratch / entry.name
        location.get(name, local)
    problem = _file_problem(local, entry, full=True)
    if problem:
        if not isinstance(location, LocalLocation):
            local.unlink(missing_ok=True)
        raise BadReplica(f"{entry.name} {problem}", file=location.uri(name))
    return local


def inspect(location: Location, path: str, scratch: Path, *, full: bool) -> Inspection:
    """Check the artifact at ``path`` against its own marker: sizes, then checksums if ``full``.

    A store's own md5 (``ObjectInfo.md5``) stands for the checksum when it keeps one; otherwise
    the object is downloaded into ``scratch`` and hashed.
    """
    try:
        marker, _, info = read_marker(location, path, scratch)
    except BadReplica as exc:
        return Inspection(None, None, [exc.message])
    problems = []
    for entry in marker.files:
        problem = _object_problem(location, f"{path}/{entry.name}", entry, scratch, full=full)
        if problem:
            problems.append(f"{entry.name} {problem}")
    return Inspection(marker, info.generation, problems)


def _object_problem(
    location: Location, name: str, entry: FileEntry, scratch: Path, *, full: bool
) -> str | None:
    info = location.stat(name)
    problem = _stat_problem(entry, info)
    if problem or not full or (info is not None and info.md5):
        return problem
    if isinstance(location, LocalLocation):
        return _file_problem(location.path(name), entry, full=True)
    local = scratch / f"{secrets.token_hex(4)}.{entry.name}"
    try:
        location.get(name, local)
        return _file_problem(local, entry, full=True)
    finally:
        local.unlink(missing_ok=True)


def _stat_problem(entry: FileEntry, info: ObjectInfo | None) -> str | None:
    if info is None:
        return "is missing"
    if info.size != entry.size:
        return f"has {info.size} bytes, {MARKER} says {entry.size}"
    if info.md5 and info.md5 != entry.md5:
        return f"has md5 {info.md5}, {MARKER} says {entry.md5}"
    return None


def _file_problem(local: Path, entry: FileEntry, *, full: bool) -> str | None:
    size = local.stat().st_size
    if size != entry.size:
        return f"has {size} bytes, {MARKER} says {entry.size}"
    if full and (md5 := md5_file(local)) != entry.md5:
        return f"has md5 {md5}, {MARKER} says {entry.md5}"
    return None


def publish(dst: Location, path: str, staged: Staged, *, link: bool) -> tuple[ObjectInfo, bool]:
    """Copy (or, with ``link``, hard-link) a staged artifact to ``path`` at ``dst``, marker last.

    Returns:
        The marker object's info, and whether the files were hard-linked.

    Raises:
        AlreadyExists: another writer published the artifact there first (nothing of ours
            remains, and nothing of theirs was removed).
        StorageError: a file arrived damaged or could not be written (our copy is removed).
    """
    if isinstance(dst, LocalLocation):
        return _publish_local(dst, path, staged, link=link)
    return _publish_object(dst, path, staged), False


def _publish_local(
    dst: LocalLocation, path: str, staged: Staged, *, link: bool
) -> tuple[ObjectInfo, bool]:
    folder = dst.path(path)
    if folder.is_dir() and not (folder / MARKER).exists():
        remove_folder(folder)  # debris without a marker is no artifact; it would block the rename
    temp = atomic.temp_sibling(folder)
    parent = PurePosixPath(path).parent
    temp_rel = temp.name if str(parent) == "." else f"{parent}/{temp.name}"
    try:
        linked = link and staged.in_place and _link_files(staged, temp)
        for entry in staged.entries:
            if not linked:
                dst.put(staged.files[entry.name], f"{temp_rel}/{entry.name}")
            # A hard link is the verified source's own inode: its size is proof enough.
            if problem := _file_problem(temp / entry.name, entry, full=not linked):
                raise StorageError(
                    f"{entry.name} arrived damaged: it {problem}",
                    file=str(folder),
                    stage="transfer",
                )
        dst.put(staged.marker_file, f"{temp_rel}/{MARKER}")
        atomic.fsync_tree(temp)
        if not atomic.publish_dir(temp, folder):
            raise AlreadyExists("another writer published it first", file=str(folder))
    except BaseException:
        atomic.remove_tree(temp)
        raise
    info = dst.stat(marker_path(path))
    if info is None:
        raise StorageError("vanished right after publishing", file=str(folder), stage="transfer")
    return info, linked


def _link_files(staged: Staged, temp: Path) -> bool:
    try:
        for name, source in staged.files.items():
            os.link(source, temp / name)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        for name in staged.files:
            (temp / name).unlink(missing_ok=True)
        return False
    return True


def _publish_object(dst: Location, path: str, staged: Staged) -> ObjectInfo:
    written: list[str] = []
    try:
        for entry in staged.entries:
            name = f"{path}/{entry.name}"
            written.append(name)
            if problem := _stat_problem(entry, dst.put(staged.files[entry.name], name)):
                raise StorageError(
                    f"{entry.name} arrived damaged: it {problem}",
                    file=dst.uri(name),
                    stage="transfer",
                )
        info = dst.put(staged.marker_file, marker_path(path), if_absent=True)
    except AlreadyExists:
        raise  # the data objects now belong to the winner's artifact too: keep them
    except BaseException as exc:
        _delete_after_failure(dst, written, exc)
        raise
    marker_entry = FileEntry(
        MARKER, staged.marker_file.stat().st_size, md5_file(staged.marker_file)
    )
    problems = [f"{MARKER} {p}" for p in [_stat_problem(marker_entry, info)] if p]
    # Re-stat the data behind the marker: a reclaim racing this copy may have deleted some.
    for entry in staged.entries:
        if problem := _stat_problem(entry, dst.stat(f"{path}/{entry.name}")):
            problems.append(f"{entry.name} {problem}")
    if problems:
        _delete_all(dst, [marker_path(path), *written])
        raise StorageError(
            "the published copy is damaged: " + "; ".join(problems),
            file=dst.uri(path),
            stage="transfer",
        )
    return info


def _delete_all(location: Location, names: list[str]) -> None:
    for name in names:
        location.delete(name)


def _delete_after_failure(location: Location, names: list[str], failure: BaseException) -> None:
    """Delete a failed copy's objects; if the store refuses that too, ``failure`` stays the error.

    A store that just failed an upload usually fails the deletes as well: reporting the delete
    would hide why the copy failed. Objects left without their marker are no artifact, and the
    next copy of the artifact overwrites them.
    """
    try:
        _delete_all(location, names)
    except StorageError as cleanup:
        failure.add_note(
            f"its data objects could not be removed ({cleanup.message}); without {MARKER} they "
            "are no artifact, and the next copy overwrites them"
        )


def remove(location: Location, path: str, scratch: Path, *, names: list[str]) -> None:
    """Delete the artifact at ``path``: the marker first, so it stops existing, then its files.

    Args:
        location: where it is.
        path: its folder within the location.
        scratch: a private local folder (to read the marker of a remote artifact).
        names: file names to delete besides those its own marker lists.
    """
    if isinstance(location, LocalLocation):
        folder = location.path(path)
        if folder.is_dir():
            remove_folder(folder)
        return
    try:
        marker, _, _ = read_marker(location, path, scratch)
    except BadReplica:
        listed: list[str] = []  # no readable marker: the names given are all we know
    else:
        listed = [entry.name for entry in marker.files]
    everything = sorted({*names, *listed})
    _delete_all(location, [marker_path(path), *(f"{path}/{name}" for name in everything)])


def remove_partial(location: Location, path: str, *, names: list[str]) -> None:
    """Delete what a dead writer left of an unpublished copy at ``path`` (never a published one).

    On local disk that is its temp folders (their names carry the dead owner's pid); on an object
    store, the data objects — each only while the marker is absent: once it is there, the copy
    was completed (by that writer or another) and is an artifact.
    """
    if isinstance(location, LocalLocation):
        atomic.sweep(location.path(path).parent)
        return
    for name in names:
        if location.stat(marker_path(path)) is not None:
            return
        location.delete(f"{path}/{name}")


def remove_folder(folder: Path) -> None:
    """Move a folder aside (one rename, so readers never see it half-deleted), then delete it."""
    aside = atomic.temp_sibling(folder.parent / f"{folder.name}.removed")
    os.rename(folder, aside / folder.name)
    atomic.remove_tree(aside)


def same_filesystem(src: Location, dst: Location) -> bool:
    """Whether both are local folders on one device, so files can be hard-linked across."""
    if not (isinstance(src, LocalLocation) and isinstance(dst, LocalLocation)):
        return False
    return _device(Path(src.root)) == _device(Path(dst.root))


def _device(folder: Path) -> int:
    while not folder.exists():
        folder = folder.parent
    return folder.stat().st_dev
