"""``genoflow status --table FILE``: the status records as one row per (source md5, asset).

The table carries only what ``status --json`` already says, flattened for analysts (lists joined
with ``;``), and is built as a pandas DataFrame. pandas is imported only here, when a table is
asked for, so no other command pays for it.

Invariant: FILE is whole or untouched. The table is written to a private temp file in FILE's own
folder, fsynced and renamed over FILE; any failure removes the temp file and leaves FILE as it
was. A URI is shown only redacted, so a signed URL's token never reaches the file.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genoflow.build.steps import CHAINS
from genoflow.cli.report import asset_state
from genoflow.core.errors import GenoflowError, redact
from genoflow.storage.atomic import fsync_dir

if TYPE_CHECKING:
    import pandas as pd

SEPARATORS = {".csv": ",", ".tsv": "\t"}
PARQUET_ENGINES = ("pyarrow", "fastparquet")
SOURCE_COLUMNS = ("md5", "names", "family", "format", "asset")
ASSET_COLUMNS = (
    "state",
    "valid",
    "version",
    "passed_checks",
    "failed_checks",
    "unrun_checks",
    "replicas",
    "invalid_replicas",
    "replica_uris",
    "path",
    "files",
)
COLUMNS = SOURCE_COLUMNS + ASSET_COLUMNS
COUNTS = ("replicas", "invalid_replicas")
STAGE = "status --table"


def table_format(dest: Path) -> str:
    """The format ``dest``'s suffix asks for (``.csv``, ``.tsv`` or ``.parquet``), checked before
    any work: a Parquet file needs an engine (pyarrow) that genoflow does not install.

    Raises:
        GenoflowError: the suffix is none of those, or no Parquet engine can be imported.
    """
    suffix = dest.suffix.lower()
    if suffix in SEPARATORS:
        return suffix
    if suffix != ".parquet":
        raise GenoflowError(
            f"cannot tell the table's format from {suffix or 'a name without a suffix'!r}",
            file=str(dest),
            stage=STAGE,
            hint="name the file .csv, .tsv or .parquet",
        )
    if _parquet_engine() is None:
        raise GenoflowError(
            "writing Parquet needs pyarrow, which is not installed",
            file=str(dest),
            stage=STAGE,
            hint="pip install pyarrow, or name the file .csv or .tsv",
        )
    return suffix


def _parquet_engine() -> str | None:
    for engine in PARQUET_ENGINES:
        try:
            importlib.import_module(engine)
        except ImportError:
            continue
        return engine
    return None


def table_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (md5, family, asset) of the status records, in their order; the names one
    md5 is registered under are joined into ``names``, an asset not yet built is ``missing``."""
    by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault((record["md5"], record["family"]), []).append(record)
    rows = []
    for (md5, family), same in by_source.items():
        source = {
            "md5": md5,
            "names": _joined(record["name"] for record in same),
            "family": family,
            "format": _joined(record["format"] for record in same),
        }
        for asset in CHAINS[family]:
            artifact = same[0]["assets"].get(asset)
            rows.append({**source, "asset": asset, **_asset_columns(artifact)})
    return rows


def _asset_columns(artifact: dict[str, Any] | None) -> dict[str, Any]:
    if not artifact:
        missing = {"state": "missing", "valid": None}
        return dict.fromkeys(ASSET_COLUMNS, "") | dict.fromkeys(COUNTS, 0) | missing
    checks = artifact.get("checks", {})
    replicas = artifact["replicas"]
    return {
        "state": asset_state(artifact),
        "valid": artifact["valid"],
        "version": artifact["version"],
        "passed_checks": _joined(name for name, passed in checks.items() if passed is True),
        "failed_checks": _joined(artifact.get("failed_checks", [])),
        "unrun_checks": _joined(name for name, passed in checks.items() if passed is None),
        "replicas": len(replicas),
        "invalid_replicas": sum(1 for replica in replicas if replica["type"] == "INVALID"),
        "replica_uris": _joined(redact(replica["uri"]) for replica in replicas),
        "path": artifact["path"] or "",
        "files": _joined(artifact["files"]),
    }


def _joined(values: Iterable[str]) -> str:
    """Distinct values in first-seen order, ``;``-separated (empty when there are none)."""
    return ";".join(dict.fromkeys(values))


def status_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The status records as a DataFrame with :data:`COLUMNS` (even when there are no rows)."""
    import pandas as pd

    frame = pd.DataFrame(table_rows(records), columns=list(COLUMNS))
    dtypes = {column: "str" for column in COLUMNS} | dict.fromkeys(COUNTS, "int64")
    return frame.astype(dtypes | {"valid": "boolean"})


def write_status_table(records: Sequence[dict[str, Any]], dest: Path) -> int:
    """Write the status table to ``dest`` in the format its suffix names; return its row count.

    Raises:
        GenoflowError: the format cannot be written (see :func:`table_format`), or ``dest``'s
            folder does not take the file; ``dest`` is then untouched.
    """
    suffix = table_format(dest)
    frame = status_table(records)
    try:
        _replace_atomically(frame, dest, suffix)
    except OSError as exc:
        raise GenoflowError(
            f"cannot write the table: {exc.strerror or exc}",
            file=str(dest),
            stage=STAGE,
            hint="give a file in an existing folder you may write to",
        ) from None
    return len(frame)


def _replace_atomically(frame: pd.DataFrame, dest: Path, suffix: str) -> None:
    """Write ``frame`` to a temp sibling of ``dest``, fsync it and rename it over ``dest``."""
    temp = dest.parent / f".{dest.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    # O_EXCL: never follow or reuse someone's file; 0o666 lets the umask decide, as for any file.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if suffix == ".parquet":
            frame.to_parquet(temp, engine=_parquet_engine() or "auto", index=False)
        else:
            frame.to_csv(temp, sep=SEPARATORS[suffix], index=False, lineterminator="\n")
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    # Durability of the rename only: the table is already whole in place, so a folder that
    # cannot be fsynced (some network filesystems) does not make the export a failure.
    with contextlib.suppress(OSError):
        fsync_dir(dest.parent)
