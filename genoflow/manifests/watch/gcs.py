"""Manifests kept in a bucket: the objects directly under a ``gs://bucket/prefix``.

Invariant: a manifest is read from a local copy that was verified against the object it was
listed as (its md5, or its crc32c for composite objects), so the rows the sensor reads are exactly
the content its cursor records. The copies live under ``GENOFLOW_HOME/manifests/gs/``; a row's
relative uri names an object beside the manifest in the bucket, never a file beside the copy.
Listing and reading go through gcsfs (:mod:`genoflow.storage.gcs`). No Dagster here.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from genoflow.core.errors import GenoflowError, ManifestError, redact
from genoflow.manifests.watch.cursor import MANIFEST_SUFFIXES, Listing
from genoflow.storage.atomic import remove_tree, temp_sibling
from genoflow.storage.gcs import (
    GcsLocation,
    ObjectInfo,
    call_with_retry,
    describe,
    object_info,
)


class GcsManifests:
    """The manifests directly under one ``gs://bucket/prefix`` (``*.tsv``, ``*.csv``, ``*.json``).

    Objects whose name starts with ``.`` and "sub-folders" are ignored, as in a local folder.
    Objects are written whole or not at all, so nothing needs to settle: a manifest is read as
    soon as it is listed.

    Args:
        prefix: ``gs://bucket`` or ``gs://bucket/prefix``.
        copies: the local folder the manifests are copied into before they are read.
    """

    def __init__(self, prefix: str, *, copies: Path) -> None:
        try:
            self.location = GcsLocation("manifests", prefix.rstrip("/"), deployment="manifests")
        except GenoflowError as exc:
            raise ManifestError(
                exc.message, file=redact(prefix), stage="watch", hint=_HINT
            ) from None
        self.copies = Path(copies) / self.location.bucket / self.location.prefix
        self._listed: dict[str, str] = {}

    def __str__(self) -> str:
        return self.location.root

    @property
    def base(self) -> str:
        """What the manifests' relative uris resolve against."""
        return self.location.root

    def exists(self) -> bool:
        """Whether the bucket answers (an empty or not yet used prefix still exists)."""
        fs = self.location.filesystem()
        try:
            return bool(call_with_retry(lambda: fs.exists(self.location.bucket)))
        except Exception as exc:  # unreachable store: the sensor says so and tries next tick
            raise self._error("cannot reach the bucket", exc) from None

    def listing(self, *, now: float | None = None) -> Listing:
        """Every manifest object's content hash (``md5:…``, or ``crc32c:…`` when it has no md5)."""
        fs = self.location.filesystem()
        folder = "/".join(p for p in (self.location.bucket, self.location.prefix) if p)
        try:
            entries = call_with_retry(lambda: fs.ls(folder, detail=True))
        except FileNotFoundError:
            entries = []
        except Exception as exc:
            raise self._error("cannot list the manifests", exc) from None
        hashes: dict[str, str] = {}
        for entry in sorted(entries, key=lambda e: e["name"]):
            name = posixpath.basename(entry["name"].rstrip("/"))
            if entry.get("type") != "file" or not _is_manifest(name):
                continue
            hashes[name] = _content_hash(object_info(entry))
        self._listed = hashes
        return Listing(hashes)

    def path(self, name: str) -> Path:
        """A verified local copy of manifest ``name``, as listed last.

        Raises:
            ManifestError: the object cannot be read, or changed since it was listed (it is read
                again on the next tick).
        """
        copy = self.copies / name
        temp = temp_sibling(copy)
        try:
            info = self.location.get(name, temp / name)
            listed = self._listed.get(name)
            # A download knows its md5 even for a composite object, listed by crc32c and size.
            downloaded = {f"md5:{info.md5}", f"crc32c:{info.crc32c}:{info.size}"}
            if listed is not None and listed not in downloaded:
                raise ManifestError(
                    "changed while it was being read",
                    file=self.location.uri(name),
                    stage="watch",
                    hint="nothing to do: it is read again on the next tick",
                )
            os.chmod(temp / name, 0o600)  # it may hold signed URLs
            os.replace(temp / name, copy)
        except GenoflowError as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(
                f"cannot copy the manifest: {exc.message}",
                file=self.location.uri(name),
                stage="watch",
                hint=exc.hint,
            ) from None
        finally:
            remove_tree(temp)
        return copy

    def _error(self, what: str, exc: BaseException) -> ManifestError:
        return ManifestError(f"{what}: {describe(exc)}", file=str(self), stage="watch", hint=_HINT)


_HINT = "check GENOFLOW_MANIFESTS (gs://bucket/prefix) and the credentials that read it"


def _is_manifest(name: str) -> bool:
    return bool(name) and not name.startswith(".") and name.lower().endswith(MANIFEST_SUFFIXES)


def _content_hash(info: ObjectInfo) -> str:
    """The cursor's hash of an object: its md5, or for composite objects crc32c and size."""
    return f"md5:{info.md5}" if info.md5 else f"crc32c:{info.crc32c}:{info.size}"
