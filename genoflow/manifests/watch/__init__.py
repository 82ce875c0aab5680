"""Watched manifests: a local folder (:mod:`.local`) or a gs:// prefix (:mod:`.gcs`), and the
cursor that says which of them hold content not seen before (:mod:`.cursor`). No Dagster here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from genoflow.core.errors import ManifestError
from genoflow.core.settings import Settings, manifests_variable
from genoflow.manifests.watch.cursor import (
    MANIFEST_SUFFIXES,
    Listing,
    ManifestCursor,
    Scan,
    content_hash,
    scan,
)
from genoflow.manifests.watch.local import SETTLE_SECONDS, LocalManifests

if TYPE_CHECKING:
    from genoflow.manifests.watch.gcs import GcsManifests

__all__ = [
    "MANIFEST_SUFFIXES",
    "SETTLE_SECONDS",
    "Listing",
    "LocalManifests",
    "ManifestCursor",
    "Scan",
    "content_hash",
    "manifest_location",
    "scan",
]


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
    location = manifests_variable(environ)
    if location.startswith("gs://"):
        from genoflow.manifests.watch.gcs import GcsManifests

        copies = copies or Settings.from_env(environ).home / "manifests" / "gs"
        return GcsManifests(location, copies=copies)
    if "://" in location:
        raise ManifestError(
            "manifests are watched in a local folder or a gs://bucket/prefix only",
            file=location,
            stage="watch",
            hint="set GENOFLOW_MANIFESTS to a local folder or a gs:// prefix",
        )
    return LocalManifests(location)
