"""Which manifests of a watched folder hold content not seen before.

Invariant: the cursor keeps one short content hash per manifest name and nothing else, so it stays
small however many rows the manifests hold. A manifest counts as *changed* only when its content
hash is one the cursor does not hold under any name: an identical rewrite, a rename or a copy of
a known manifest changes nothing, and a deleted manifest only leaves the cursor. A file modified
within the last ``settle`` seconds is left for a later look (keeping what the cursor knew of it),
so a manifest still being copied in is never read half way. No Dagster here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genoflow.checksums import open_regular
from genoflow.errors import ManifestError

if TYPE_CHECKING:
    from genoflow.watch_gcs import GcsManifests

DEFAULT_LOCATION = "data/manifests"
MANIFEST_SUFFIXES = (".tsv", ".csv", ".json")
SETTLE_SECONDS = 2.0
_CURSOR_VERSION = 1
_CHUNK = 1 << 20


def content_hash(path: Path) -> str:
    """A 128-bit BLAKE2b of the file's bytes, as 32 hex digits."""
    digest = hashlib.blake2b(digest_size=16)
    # Never blocks: a FIFO named like a manifest raises NotRegularFileError (an OSError).
    with open_regular(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ManifestCursor:
    """Manifest name → content hash, as last seen.

    Attributes:
        hashes: manifests whose rows have all been handled.
        partial: manifests read in part (more new md5s than one tick takes), with the hash
            of the content being worked through; they are read again on the next tick.
    """

    hashes: Mapping[str, str] = field(default_factory=dict)
    partial: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> ManifestCursor:
        """Read a cursor written by :meth:`dumps`; no cursor, or another version, is empty.

        An empty cursor only costs a re-read: rows already registered and md5s already
        partitioned are recognised downstream, so nothing runs twice.
        """
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # a cursor edited by hand: start over, nothing is lost
            return cls()
        if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
            return cls()
        return cls(dict(data["hashes"]), dict(data.get("partial", {})))

    def dumps(self) -> str:
        data: dict = {"v": _CURSOR_VERSION, "hashes": dict(sorted(self.hashes.items()))}
        if self.partial:
            data["partial"] = dict(sorted(self.partial.items()))
        return json.dumps(data, separators=(",", ":"))

    def unfinished(self, names: set[str]) -> ManifestCursor:
        """This cursor with ``names`` moved from done to partial (read again next tick)."""
        return ManifestCursor(
            {name: h for name, h in self.hashes.items() if name not in names},
            {name: h for name, h in self.hashes.items() if name in names},
        )

    def continues(self, name: str, digest: str) -> bool:
        """Whether ``name`` with this content was read in part on an earlier tick."""
        return self.partial.get(name) == digest


@dataclass(frozen=True)
class Listing:
    """What a watched folder holds now: settled manifests' hashes, and the names still moving."""

    hashes: Mapping[str, str]
    unsettled: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scan:
    """The difference between a listing and the previous cursor."""

    changed: list[str]
    unchanged: int
    moved: list[str]
    deleted: list[str]
    unsettled: list[str]
    problems: tuple[str, ...]
    cursor: ManifestCursor

    def summary(self) -> str:
        """One line for a sensor's skip reason or log."""
        parts = [f"{len(self.changed)} changed", f"{self.unchanged} unchanged"]
        if self.moved:
            parts.append(f"{len(self.moved)} renamed or copied (content already seen)")
        if self.deleted:
            parts.append(f"{len(self.deleted)} deleted (their artifacts are kept)")
        if self.unsettled:
            parts.append(f"{len(self.unsettled)} still being written (read on a later tick)")
        return "manifests: " + ", ".join(parts)


class LocalManifests:
    """The manifests directly inside one local folder (``*.tsv``, ``*.csv``, ``*.json``).

    Hidden files (a leading ``.``, as editors and ``rsync`` use for temporary copies) are
    ignored, and so are sub-folders: a manifest's relative uris resolve against its own folder,
    so moving one between folders would change what it means.

    Args:
        folder: the folder to watch.
        settle: seconds a file must have been left untouched before it is read.
    """

    def __init__(self, folder: str | Path, *, settle: float = SETTLE_SECONDS) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.settle = settle

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def base(self) -> None:
        """Relative uris resolve against each manifest's own folder."""
        return None

    def exists(self) -> bool:
        return self.folder.is_dir()

    def path(self, name: str) -> Path:
        return self.folder / name

    def listing(self, *, now: float | None = None) -> Listing:
        """Hash every settled manifest; a file that vanishes meanwhile is simply not listed."""
        now = time.time() if now is None else now
        hashes: dict[str, str] = {}
        unsettled: set[str] = set()
        problems: list[str] = []
        with os.scandir(self.folder) as entries:
            candidates = sorted(
                (entry for entry in entries if _is_manifest(entry)), key=lambda e: e.name
            )
        for entry in candidates:
            try:
                if now - entry.stat().st_mtime < self.settle:
                    unsettled.add(entry.name)
                    continue
                hashes[entry.name] = content_hash(Path(entry.path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{entry.path}: cannot read it ({exc.strerror or exc})")
        return Listing(hashes, frozenset(unsettled), tuple(problems))


def _is_manifest(entry: os.DirEntry) -> bool:
    name = entry.name
    return (
        not name.startswith(".")
        and name.lower().endswith(MANIFEST_SUFFIXES)
        # Not is_file(): a FIFO or device named like a manifest is listed, then refused as a
        # problem by content_hash, rather than skipped without a word.
        and not entry.is_dir(follow_symlinks=True)
    )


def scan(previous: ManifestCursor, listing: Listing) -> Scan:
    """Compare a folder's listing with the previous cursor.

    A manifest whose hash the previous cursor holds under another name was renamed or copied:
    its rows were read already, so it is recorded but not changed. A manifest still being
    written keeps its previous hash (if any) until it settles.
    """
    seen = set(previous.hashes.values())
    changed, moved = [], []
    unchanged = 0
    for name, digest in listing.hashes.items():
        if previous.hashes.get(name) == digest:
            unchanged += 1
        elif digest in seen:
            moved.append(name)
        else:
            changed.append(name)
            seen.add(digest)  # a second new copy of the same content is read once
    hashes = dict(listing.hashes)
    for name in listing.unsettled:
        if name in previous.hashes:
            hashes[name] = previous.hashes[name]
    deleted = sorted(set(previous.hashes) - set(hashes))
    return Scan(
        changed=changed,
        unchanged=unchanged,
        moved=moved,
        deleted=deleted,
        unsettled=sorted(listing.unsettled),
        problems=listing.problems,
        cursor=ManifestCursor(hashes),
    )


def manifest_location(
    environ: Mapping[str, str] | None = None, *, copies: Path | None = None
) -> LocalManifests | GcsManifests:
    """The watched manifests: ``GENOFLOW_MANIFESTS`` (default ``data/manifests``).

    Args:
        environ: the environment to read (default ``os.environ``).
        copies: where manifests kept in a bucket are copied before they are read (default
            ``GENOFLOW_HOME/manifests/gs``).

    Raises:
        ManifestError: the variable names a URI other than ``gs://bucket[/prefix]``.
    """
    env = os.environ if environ is None else environ
    location = env.get("GENOFLOW_MANIFESTS") or DEFAULT_LOCATION
    if location.startswith("gs://"):
        from genoflow.config import Settings
        from genoflow.watch_gcs import GcsManifests

        copies = copies or Settings.from_env(env).home / "manifests" / "gs"
        return GcsManifests(location, copies=copies)
    if "://" in location:
        raise ManifestError(
            "manifests are watched in a local folder or a gs://bucket/prefix only",
            file=location,
            stage="watch",
            hint="set GENOFLOW_MANIFESTS to a local folder or a gs:// prefix",
        )
    return LocalManifests(location)
