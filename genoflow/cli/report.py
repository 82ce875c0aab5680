"""What the CLI prints: the run summary table, status records, and errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from genoflow.build.steps import CHAINS, key_for
from genoflow.core.errors import redact
from genoflow.core.settings import Settings
from genoflow.instance.run_history import Verdicts
from genoflow.storage.locations import DataType
from genoflow.storage.node import Node
from genoflow.storage.registry import SourceRow
from genoflow.storage.replicas import ReplicaState
from genoflow.storage.upkeep import RepairOutcome

ASSETS = ("source", "sorted", "index")


def print_json_list(records: Sequence[dict]) -> None:
    """A JSON list with one record per line: readable, and written by the C encoder (an
    indented dump goes through Python's, seconds for 100,000 records)."""
    print("[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]")


def print_errors(problems: Iterable[str]) -> None:
    for problem in problems:
        print(f"genoflow: {problem}", file=sys.stderr)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def print_summary(sources: dict[str, list[Any]], outcomes: Sequence[Any], *, as_json: bool) -> None:
    """One line per manifest name: md5, format, each asset's status, its checks, the seconds.

    A failed check shows as its asset ``failed``, its name in the ``checks`` column (``False``
    in ``--json``'s ``checks``) and its message on stderr, the same as a failed step.
    """
    by_md5 = {outcome.md5: outcome for outcome in outcomes}
    records = []
    for md5, rows in sources.items():
        outcome = by_md5[md5]
        for name in dict.fromkeys(row.name for row in rows):
            records.append(
                {
                    "name": name,
                    "md5": md5,
                    "family": rows[0].family,
                    "format": rows[0].format,
                    "assets": {a: outcome.assets.get(a) for a in CHAINS[rows[0].family]},
                    "checks": outcome.checks,
                    "seconds": round(outcome.seconds, 2),
                    "error": outcome.error,
                    "run_id": outcome.run_id,
                }
            )
    if as_json:
        print_json_list(records)
        return
    header = ["name", "md5", "format", *ASSETS, "checks", "seconds"]
    rows = [
        [
            r["name"],
            r["md5"][:12],
            r["format"],
            *(r["assets"].get(a) or "-" for a in ASSETS),
            _checks_cell(r["checks"]),
            f"{r['seconds']:.1f}",
        ]
        for r in records
    ]
    print(_table(header, rows))
    ok = sum(1 for outcome in outcomes if outcome.ok)
    print(f"\n{ok} of {len(outcomes)} sources ok")
    print_errors(r["error"] for r in records if r["error"])


def _checks_cell(checks: dict[str, bool]) -> str:
    """``ok`` when every check that ran passed, else the failed ones (``index:answers_…``)."""
    failed = [name for name, passed in checks.items() if passed is False]
    if failed:
        return "FAILED " + ",".join(failed)
    return "ok" if checks else "-"


def status_records(rows: Sequence[SourceRow], node: Node, select: Sequence[str]) -> list[dict]:
    """One record per (name, md5): its family, format and each asset's artifact (or None).

    An asset is ``valid`` when this node's cache holds it whole (marker and sizes) and its
    replica here is not registered INVALID; its ``replicas`` list every available copy, INVALID
    ones too, so a damaged artifact shows as ``valid: false`` with why.
    """
    wanted = set(select)
    records: dict[tuple[str, str], dict[str, Any]] = {}
    # One query for every replica, not one per artifact: status stays fast with 100k sources.
    by_key: dict[str, list[Any]] = {}
    for replica in node.upkeep.all_replicas(readable=False):
        if replica.state is ReplicaState.AVAILABLE:
            by_key.setdefault(replica.relpath, []).append(replica)
    for row in rows:
        if wanted and row.name not in wanted and row.md5 not in wanted:
            continue
        if (row.name, row.md5) not in records:
            records[row.name, row.md5] = {
                "name": row.name,
                "md5": row.md5,
                "family": row.family,
                "format": row.format,
                "assets": {a: _asset_record(row, a, node, by_key) for a in CHAINS[row.family]},
            }
    add_check_verdicts(records.values(), check_verdicts(node.settings))
    return list(records.values())


def _asset_record(
    row: SourceRow, asset: str, node: Node, by_key: dict[str, list[Any]]
) -> dict[str, Any] | None:
    key = key_for(row.family, row.md5, asset)
    found = by_key.get(key.relstr, [])
    replicas = [
        {"uri": redact(r.uri), "type": str(r.data_type), "deployment": r.deployment} for r in found
    ]
    invalid_here = any(
        r.location == node.local.name and r.data_type is DataType.INVALID for r in found
    )
    # The plain cache lookup: Node.lookup would ask the registry once per artifact.
    artifact = None if invalid_here else node.cache.lookup(key)
    if artifact is not None:
        return {
            "path": str(artifact.path),
            "files": [str(path) for path in artifact.files],
            "version": artifact.key.version,
            "valid": True,
            "replicas": replicas,
        }
    if replicas:
        return {
            "path": None,
            "files": [],
            "version": key.version,
            "valid": False,
            "replicas": replicas,
        }
    return None


def check_verdicts(settings: Settings) -> Verdicts:
    """The latest verdict of every asset check: from the embedded instance's database when it
    can say, else through Dagster's API."""
    from genoflow.instance.run_history import check_verdicts as recorded

    verdicts = recorded(settings.dagster_home)
    if verdicts is not None:
        return verdicts
    from genoflow.instance import runner

    runner.quiet_warnings()
    return runner.check_verdicts(runner.open_instance(settings), CHAINS)


def add_check_verdicts(records: Iterable[dict], verdicts: Verdicts) -> None:
    """Give each asset of each status record its checks' latest verdicts (``checks``: name →
    passed, None when not run yet); an asset whose check failed is ``valid: false`` and lists
    them in ``failed_checks``, as ``genoflow run`` shows it ``failed``."""
    for record in records:
        found = verdicts.get((record["family"], record["md5"]), {})
        for asset, artifact in record["assets"].items():
            if artifact is None:
                continue
            checks = {
                name.split(":", 1)[1]: passed
                for name, passed in found.items()
                if name.startswith(f"{asset}:")
            }
            artifact["checks"] = checks
            artifact["failed_checks"] = [name for name, passed in checks.items() if passed is False]
            if artifact["failed_checks"]:
                artifact["valid"] = False


def print_status(records: Sequence[dict], *, as_json: bool) -> None:
    if as_json:
        print_json_list(records)
        return
    header = ["name", "md5", "format", *ASSETS]
    rows = [
        [r["name"], r["md5"][:12], r["format"]] + [_cell(r["assets"], asset) for asset in ASSETS]
        for r in records
    ]
    print(_table(header, rows))


def asset_state(artifact: dict[str, Any] | None) -> str:
    """One word for a status record's asset: ``missing`` (never built), ``failed_check`` (a
    check's latest verdict failed), ``here`` (whole in this node's cache), ``invalid`` (every
    copy registered INVALID) or ``elsewhere`` (only other locations hold a valid copy)."""
    if not artifact:
        return "missing"
    if artifact.get("failed_checks"):
        return "failed_check"
    if artifact["valid"]:
        return "here"
    if all(r["type"] == "INVALID" for r in artifact["replicas"]):
        return "invalid"  # no valid copy anywhere: `genoflow verify --repair` rebuilds it
    return "elsewhere"


def _cell(assets: dict[str, Any], asset: str) -> str:
    if asset not in assets:
        return "-"
    artifact = assets[asset]
    state = asset_state(artifact)
    if artifact is None or state == "missing":
        return "missing"
    if state == "failed_check":
        return f"v{artifact['version']} FAILED check {','.join(artifact['failed_checks'])}"
    where = "INVALID" if state == "invalid" else state
    copies = len(artifact["replicas"])
    return f"v{artifact['version']} {where} ({copies} replica{'s' if copies != 1 else ''})"


def print_verify(outcomes: Sequence[RepairOutcome]) -> None:
    """One line per bad replica (``restored``, ``rebuilt`` or still ``INVALID``), then a summary."""
    for outcome in outcomes:
        if outcome.problems:
            state, problems = "INVALID", "; ".join(outcome.problems)
            if outcome.restored:
                # Only the damage found is worth showing: "no valid replica is left" was true
                # before the rebuild and would read as a contradiction beside it.
                state = "rebuilt" if outcome.rebuild else "restored"
                how = "from its input" if outcome.rebuild else "from a valid replica"
                problems = f"was bad ({outcome.problems[0]}); {state} {how}"
            print(f"{state:8}  {redact(outcome.replica.uri)}: {problems}")
    bad = sum(1 for o in outcomes if o.problems)
    fixed = sum(1 for o in outcomes if o.restored and not o.rebuild)
    rebuilt = sum(1 for o in outcomes if o.restored and o.rebuild)
    intact = len(outcomes) - bad
    print(
        f"{len(outcomes)} replicas checked, {intact} intact, {bad} bad, {fixed} restored, "
        f"{rebuilt} rebuilt"
    )
