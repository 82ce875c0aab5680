"""What a person inspecting an artifact's lineage in the UI reads, beside the IO manager's facts.

Invariant: nothing here shows a signed URL's query string (every URI goes through
:func:`~genoflow.core.errors.redact`), and no key repeats one the IO manager adds (paths, files,
sizes, checksums, record counts, processor and tool versions), so the two never collide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dagster import MetadataValue

from genoflow.core.errors import redact
from genoflow.core.formats import FAMILY
from genoflow.core.settings import ServeSettings
from genoflow.defs import tags
from genoflow.storage.registry import SourceRow

MAX_ROWS_SHOWN = 50  # an md5 listed by thousands of manifests still renders


def family_formats(family: str) -> list[str]:
    """The formats processed by ``family``, in the order the formats module lists them."""
    return [fmt for fmt, owner in FAMILY.items() if owner == family]


def output_tags(details: Mapping[str, Any], family: str) -> dict[str, str]:
    """Materialization tags, so one partition's events can be filtered by format and family."""
    return {tags.FAMILY: family, tags.FORMAT: str(details.get("format", ""))}


def viewer_metadata(family: str, md5: str) -> dict[str, Any]:
    """A link to the source's page in ``genoflow serve`` (``/view/{md5}``, igv.js), when
    ``GENOFLOW_PUBLIC_URL`` says where the server is; passthrough files link to their data."""
    public = ServeSettings.from_env().public_url
    if not public:
        return {}
    if family == "passthrough":
        return {"served_at": MetadataValue.url(f"{public}/data/{md5}")}
    return {"viewer": MetadataValue.url(f"{public}/view/{md5}")}


def source_metadata(rows: Sequence[SourceRow]) -> dict[str, Any]:
    """Where the source came from: every manifest row naming it, and its upstream URIs."""
    uris = list(dict.fromkeys(redact(row.uri) for row in rows))
    lines = [
        "| manifest row | name | format | uri |",
        "| --- | --- | --- | --- |",
        *(
            f"| `{row.manifest}:{row.line}` | {_cell(row.name)} | {row.format} "
            f"| {_cell(redact(row.uri))} |"
            for row in rows[:MAX_ROWS_SHOWN]
        ),
    ]
    if len(rows) > MAX_ROWS_SHOWN:
        lines.append(f"\n… and {len(rows) - MAX_ROWS_SHOWN} more rows")
    metadata: dict[str, Any] = {
        "manifests": MetadataValue.md("\n".join(lines)),
        "manifest_files": MetadataValue.json(sorted({row.manifest for row in rows})),
        "upstream_uris": MetadataValue.json(uris),
    }
    first = uris[0]
    if first.startswith(("http://", "https://", "gs://")):
        metadata["upstream"] = MetadataValue.url(first)
    else:
        metadata["upstream"] = MetadataValue.path(first)
    extra = {key: value for row in rows for key, value in row.extra.items() if value}
    if extra:
        metadata["manifest_columns"] = MetadataValue.json(extra)
    return metadata


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
