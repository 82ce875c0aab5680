"""The content-addressed layout: ``{family}/{md5[:2]}/{md5}/{asset}/v{version}``.

Every component of a key is validated against a closed pattern, so no key can name a path
outside the cache root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from genoflow.core.errors import StorageError

FAMILIES = ("alignments", "intervals", "passthrough")
ASSETS = ("source", "sorted", "index")
_MD5 = re.compile(r"[0-9a-f]{32}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class ArtifactKey:
    """Names one artifact: one asset of one source md5 at one processor version."""

    family: str
    md5: str
    asset: str
    version: str

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if not _MD5.fullmatch(self.md5):
            problems.append(f"md5 {self.md5!r} is not 32 lower-case hex digits")
        if self.asset not in ASSETS:
            problems.append(f"asset {self.asset!r} is not one of {', '.join(ASSETS)}")
        if not _VERSION.fullmatch(self.version) or ".." in self.version:
            problems.append(f"version {self.version!r} is not a plain version string")
        if problems:
            raise StorageError(
                "invalid artifact key: " + "; ".join(problems),
                stage="cache",
                hint="artifact keys come from validated manifests; this is a bug if you see it",
            )

    @classmethod
    def parse(cls, relstr: str) -> ArtifactKey | None:
        """The key whose :attr:`relstr` is ``relstr``, or None when it names no artifact folder."""
        parts = relstr.split("/")
        if len(parts) != 5 or not parts[4].startswith("v"):
            return None
        family, prefix, md5, asset, version = parts
        try:
            key = cls(family, md5, asset, version[1:])
        except StorageError:
            return None
        return key if prefix == md5[:2] else None

    @property
    def relpath(self) -> PurePosixPath:
        """The artifact folder relative to the cache root."""
        return PurePosixPath(self.relstr)

    @property
    def relstr(self) -> str:
        """:attr:`relpath` as a string, without building a path (status reads 100,000s)."""
        return f"{self.family}/{self.md5[:2]}/{self.md5}/{self.asset}/v{self.version}"

    @property
    def asset_path(self) -> str:
        """The Dagster-style asset path, e.g. ``alignments/sorted``."""
        return f"{self.family}/{self.asset}"

    def __str__(self) -> str:
        return f"{self.asset_path}@{self.md5[:12]}/v{self.version}"
