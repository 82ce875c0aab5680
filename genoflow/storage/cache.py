"""The local content-addressed cache: look up, build privately, publish atomically.

Invariants:
- an artifact folder exists only once complete: it is built in a temp sibling and renamed into
  place (:mod:`genoflow.storage.atomic`), with ``genoflow.json`` written last;
- a published folder is never overwritten; a second builder's copy is discarded;
- a reader trusts a folder only when ``genoflow.json`` is present and every listed file has the
  listed size (full checksums on demand with :meth:`Artifact.verify`);
- the per-artifact file lock only avoids redundant builds; it is never what makes publishing
  correct;
- a failed build leaves no folder: its draft is removed, then every folder above it that is left
  empty (``rmdir`` only, so a concurrent builder's folder is never taken).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from genoflow.core.checksums import md5_file
from genoflow.core.errors import StorageError
from genoflow.storage import atomic
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.marker import FORMAT_VERSION, MARKER, FileEntry, Marker, content_checksum


@dataclass(frozen=True)
class Artifact:
    """A published artifact folder and its parsed ``genoflow.json``."""

    key: ArtifactKey
    path: Path
    marker: Marker

    @property
    def entries(self) -> list[FileEntry]:
        return self.marker.entries

    @property
    def files(self) -> list[Path]:
        """Absolute paths of the artifact's files, main file first."""
        return [self.path / entry.name for entry in self.entries]

    @property
    def main(self) -> Path:
        return self.files[0]

    @property
    def checksum(self) -> str:
        """A content checksum over every file: the data version of this artifact."""
        return content_checksum(self.entries)

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)

    def verify(self) -> list[str]:
        """Re-hash every file; return the problems found (empty when intact)."""
        problems = []
        for entry in self.entries:
            path = self.path / entry.name
            if not path.is_file():
                problems.append(f"{entry.name}: missing")
            elif path.stat().st_size != entry.size:
                problems.append(f"{entry.name}: size {path.stat().st_size} != {entry.size}")
            elif md5_file(path) != entry.md5:
                problems.append(f"{entry.name}: md5 differs from {MARKER}")
        return problems


@dataclass
class Draft:
    """A private folder where one artifact is being built; publish or discard it."""

    key: ArtifactKey
    dir: Path
    dest: Path
    lock: filelock.BaseFileLock | None = field(default=None, repr=False)


class Cache:
    """The content-addressed cache rooted at ``root`` (``$GENOFLOW_HOME/cache``)."""

    def __init__(self, root: str | Path, *, lock_timeout: float = 3600.0) -> None:
        self.root = Path(root).resolve()
        self._root = str(self.root)
        self.lock_timeout = lock_timeout

    def folder(self, key: ArtifactKey) -> Path:
        return Path(os.path.join(self._root, key.relstr))

    def lookup(self, key: ArtifactKey) -> Artifact | None:
        """Return the published artifact for ``key`` when it is present and intact by size."""
        # Plain strings until an artifact is found: status looks up 100,000s of keys.
        folder = os.path.join(self._root, key.relstr)  # self.folder(key), as a string
        try:
            with open(os.path.join(folder, MARKER), "rb") as handle:
                marker = Marker.from_json(json.loads(handle.read()))
            artifact = Artifact(key, Path(folder), marker)
            entries = artifact.entries
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, StorageError):
            # A damaged marker makes the folder untrustworthy: not an artifact; begin() moves
            # it aside and rebuilds.
            return None
        for entry in entries:
            try:
                found = os.stat(os.path.join(folder, entry.name))
            except OSError:
                return None
            if not stat.S_ISREG(found.st_mode) or found.st_size != entry.size:
                return None
        return artifact

    def begin(self, key: ArtifactKey) -> Artifact | Draft:
        """Start building ``key``: return the artifact if it exists, else a locked :class:`Draft`.

        The lock is taken before the re-check, so of N concurrent builders one builds and the
        others find its artifact. A folder that exists but fails the size check is moved
        aside (never overwritten in place) so that it can be rebuilt.

        Raises:
            StorageError: the lock was not free within ``lock_timeout`` seconds.
        """
        dest = self.folder(key)
        lock = filelock.FileLock(str(dest.parent / f".{dest.name}.lock"), timeout=self.lock_timeout)
        try:
            atomic.within_parents(dest.parent, lock.acquire)
        except filelock.Timeout as exc:
            raise StorageError(
                f"another builder of {key} held its lock for over {self.lock_timeout:g} s",
                file=str(dest),
                stage="cache",
                hint="wait for that build to finish, or raise the lock timeout",
            ) from exc
        try:
            found = self.lookup(key)
            if found is not None:
                self._release(Draft(key, dest, dest, lock))
                return found
            atomic.sweep(dest.parent)
            if dest.exists():
                _quarantine(dest)
            return Draft(key, atomic.temp_sibling(dest), dest, lock)
        except BaseException:
            self._release(Draft(key, dest, dest, lock))
            atomic.prune_empty(dest.parent, stop=self.root)
            raise

    def publish(
        self,
        draft: Draft,
        *,
        processor: str,
        inputs: list[dict[str, Any]] | None = None,
        details: dict[str, Any] | None = None,
        tools: dict[str, str] | None = None,
        entries: list[FileEntry] | None = None,
    ) -> Artifact:
        """Write the marker last, fsync, and rename the draft into place.

        Args:
            draft: the draft whose folder holds the artifact's files (main file first, by name
                order of ``details['files']`` when given, else alphabetical).
            processor: the dotted name of the function that produced the files.
            inputs: checksums of the inputs (``[{"asset": ..., "checksum": ...}]``).
            details: facts to keep (record counts, index kind, header lines…).
            tools: library versions that shaped the bytes.
            entries: the files' sizes and md5s when the caller already computed them (in
                ``details['files']`` order); hashed here otherwise.

        Returns:
            The published artifact — ours, or the one another builder published first.
        """
        try:
            details = dict(details or {})
            order = details.pop("files", None) or sorted(p.name for p in draft.dir.iterdir())
            entries = entries or [_entry(draft.dir / name) for name in order]
            marker = Marker(
                format_version=FORMAT_VERSION,
                asset=draft.key.asset_path,
                source_md5=draft.key.md5,
                version=draft.key.version,
                processor=processor,
                files=tuple(entries),
                checksum=content_checksum(entries),
                inputs=tuple(inputs or []),
                tools=tools or {},
                details=details,
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                created_by={"host": socket.gethostname(), "pid": os.getpid()},
            )
            _write_marker(draft.dir / MARKER, marker.to_json())
            atomic.fsync_tree(draft.dir)
            atomic.publish_dir(draft.dir, draft.dest)
        except BaseException as exc:
            # Every failure (a file not written, details that are not JSON) removes the draft,
            # and the folders above it that it leaves empty.
            atomic.remove_tree(draft.dir)
            self._release(draft)
            atomic.prune_empty(draft.dest.parent, stop=self.root)
            if isinstance(exc, OSError):
                raise StorageError(
                    f"could not publish {draft.key}: {exc}", file=str(draft.dest)
                ) from exc
            raise
        finally:
            self._release(draft)
        found = self.lookup(draft.key)
        if found is None:
            raise StorageError(f"{draft.key} vanished right after publishing", file=str(draft.dest))
        return found

    def discard(self, draft: Draft) -> None:
        """Remove a draft's folder, release its lock, and remove the empty folders left above.

        Every failure path calls this, so a failed build leaves no folder at all: the asset's
        folder (and the md5's and family's, when nothing else is in them) goes too.
        """
        try:
            atomic.remove_tree(draft.dir)
        finally:
            self._release(draft)
            atomic.prune_empty(draft.dest.parent, stop=self.root)

    @contextlib.contextmanager
    def workdir(self, label: str) -> Iterator[Path]:
        """A scratch folder beside the cache (same filesystem, never /tmp), always removed."""
        parent = self.root.parent / "work"
        folder = atomic.temp_sibling(parent / label)
        try:
            yield folder
        finally:
            atomic.remove_tree(folder)

    def sweep(self) -> list[Path]:
        """Remove dead temp folders anywhere in the cache and the work folder."""
        removed = atomic.sweep(self.root.parent / "work")
        for asset_dir in self.root.glob("*/*/*/*"):
            removed += atomic.sweep(asset_dir)
        return removed

    @staticmethod
    def _release(draft: Draft) -> None:
        # The lock file is removed while still held: a process already waiting on the old
        # inode may then build redundantly, which the rename makes harmless, and no lock
        # debris is left behind.
        if draft.lock is not None and draft.lock.is_locked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(draft.lock.lock_file)
            draft.lock.release()
        draft.lock = None


def _entry(path: Path) -> FileEntry:
    if not path.is_file():
        raise StorageError(f"{path.name} was not written", file=str(path))
    return FileEntry(path.name, path.stat().st_size, md5_file(path))


def _write_marker(path: Path, marker: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(marker, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _quarantine(dest: Path) -> None:
    """Move a damaged artifact folder aside so that a rebuild can take its name."""
    corrupt = atomic.temp_sibling(dest.parent / f"{dest.name}.corrupt")
    os.rename(dest, corrupt / dest.name)
    atomic.remove_tree(corrupt)
