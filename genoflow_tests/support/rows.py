"""Manifest rows for the registry tests: the fields the registry reads, one md5 per number."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """A stand-in for a parsed manifest row, with the fields the registry reads."""

    md5: str
    name: str
    uri: str
    format: str = "bed"
    family: str = "intervals"
    size: int | None = 100
    manifest: str = "manifests/lab.tsv"
    line: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


def row(number: int, **changes: Any) -> Row:
    """The manifest row for source ``number`` (one md5 per number)."""
    values: dict[str, Any] = {
        "md5": f"{number:032x}",
        "name": f"peaks{number}.bed",
        "uri": f"/data/peaks{number}.bed",
        "line": number + 2,
    }
    return Row(**(values | changes))
