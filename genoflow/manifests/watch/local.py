"""The manifests directly inside one local folder. No Dagster here."""

from __future__ import annotations

import os
import time
from pathlib import Path

from genoflow.manifests.watch.cursor import MANIFEST_SUFFIXES, Listing, content_hash

SETTLE_SECONDS = 2.0


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
