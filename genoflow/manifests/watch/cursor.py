"""Which manifests of a watched location hold content not seen before: the cursor and the scan.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from genoflow.core.checksums import open_regular

MANIFEST_SUFFIXES = (".tsv", ".csv", ".json")
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
