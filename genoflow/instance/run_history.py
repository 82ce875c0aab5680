"""The embedded Dagster instance's successful chain runs, read without starting Dagster.

``genoflow run`` of a manifest that is already built should cost next to nothing, but importing
Dagster and opening its instance alone takes seconds. When the instance is the embedded one
(the ``dagster.yaml`` genoflow writes: SQLite run storage in ``history/runs.db``), the runs that
prove a chain up to date are read straight from that database, read-only, in one query. The
answer is the same as ``runner.up_to_date`` gets through Dagster's API (a test holds the two
together); for any other instance (PostgreSQL, a user's ``dagster.yaml``), or any surprise in the
file, the answer is None and ``genoflow run`` asks Dagster as before.

One rule for failed checks: a chain is up to date only when its newest finished chain run
succeeded and no check of its assets failed at its latest execution (in that run or any other,
e.g. one launched from the UI). The same latest verdicts are what ``genoflow status`` shows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from genoflow.build.steps import CHAINS, CHECKS, chain_version, job_name, key_for
from genoflow.defs.tags import CHAIN_TAG
from genoflow.instance.home import dagster_yaml
from genoflow.instance.outcome import Outcome

# Run statuses after which nothing more happens; an in-progress run is neither proof nor veto.
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
_QUERY = """
SELECT runs.partition, runs.run_id, runs.status
FROM runs JOIN run_tags ON run_tags.run_id = runs.run_id
WHERE runs.pipeline_name = ? AND runs.status IN ('SUCCESS', 'FAILURE', 'CANCELED')
  AND run_tags.key = ? AND run_tags.value = ?
ORDER BY runs.id DESC
"""
# The latest execution of each check of each partition, as Dagster's own
# ``get_asset_check_partition_info`` picks it (the greatest id with an event).
_CHECKS_QUERY = """
SELECT asset_key, check_name, partition, execution_status FROM asset_check_executions
WHERE id IN (
  SELECT MAX(id) FROM asset_check_executions WHERE evaluation_event_storage_id IS NOT NULL
  GROUP BY asset_key, check_name, partition
)
"""
# (family, md5) → {"asset:check": True (passed) | False (failed) | None (planned, no verdict)}
Verdicts = dict[tuple[str, str], dict[str, bool | None]]
VERDICT = {"SUCCEEDED": True, "FAILED": False, "PLANNED": None}


def successful_chain_runs(
    dagster_home: Path, families: Iterable[str]
) -> dict[tuple[str, str], str] | None:
    """The newest finished whole-chain run of each md5 at its family's current code versions,
    when that run succeeded (a later failed run vetoes an earlier success).

    Args:
        dagster_home: the instance folder.
        families: the families to look at.

    Returns:
        ``(family, md5) → run id``, or None when the instance is not genoflow's embedded one
        or its run database cannot be read as expected.
    """
    config = dagster_home / "dagster.yaml"
    database = dagster_home / "history" / "runs.db"
    try:
        if config.read_text() != dagster_yaml(dagster_home) or not database.is_file():
            return None
        found: dict[tuple[str, str], str] = {}
        uri = f"{database.as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            for family in set(families):
                query = (job_name(family), CHAIN_TAG, chain_version(family))
                newest: dict[str, tuple[str, str]] = {}
                for md5, run_id, status in db.execute(_QUERY, query):
                    newest.setdefault(md5, (run_id, status))  # newest first
                for md5, (run_id, status) in newest.items():
                    if status == "SUCCESS":
                        found[family, md5] = run_id
        return found
    except (OSError, sqlite3.Error):
        return None


def chains_up_to_date(
    succeeded: Mapping[tuple[str, str], str],
    lookup: Callable[[Any], Any],
    work: Iterable[tuple[str, str]],
    verdicts: Verdicts | None = None,
) -> dict[tuple[str, str], Outcome]:
    """The chains with nothing left to do, as ``cached`` outcomes.

    A chain is up to date when its newest finished whole-chain run of its current code
    versions succeeded for that md5 (so every step and blocking check passed), no check of its
    assets failed since, and every one of its artifacts is still in this node's cache, whole by
    its marker and sizes. Anything less (another version, a failed or partial run, a failed
    check, an artifact only on a replica) must run.

    Args:
        succeeded: ``(family, md5) → run id`` of the chains whose newest finished run succeeded.
        lookup: this node's cache lookup (an artifact key → the artifact or None).
        work: ``(md5, family)`` pairs.
        verdicts: the latest check verdicts (:func:`check_verdicts`); a False vetoes.
    """
    done: dict[tuple[str, str], Outcome] = {}
    for md5, family in work:
        run_id = succeeded.get((family, md5))
        if run_id is None or False in (verdicts or {}).get((family, md5), {}).values():
            continue
        if all(lookup(key_for(family, md5, asset)) is not None for asset in CHAINS[family]):
            outcome = Outcome(md5, family, dict.fromkeys(CHAINS[family], "cached"))
            # That run passed every (blocking) check, and none has failed since.
            outcome.checks = {f"{asset}:{CHECKS[asset]}": True for asset in CHAINS[family]}
            outcome.run_id = run_id
            done[md5, family] = outcome
    return done


def recorded_up_to_date(
    dagster_home: Path, lookup: Callable[[Any], Any], work: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Outcome] | None:
    """:func:`chains_up_to_date` from the embedded instance's run database, without Dagster.

    None when that database cannot answer; the caller then asks Dagster (``runner.up_to_date``).
    """
    work = list(work)
    succeeded = successful_chain_runs(dagster_home, {family for _, family in work})
    verdicts = check_verdicts(dagster_home)
    if succeeded is None or verdicts is None:
        return None
    return chains_up_to_date(succeeded, lookup, work, verdicts)


def check_verdicts(dagster_home: Path) -> Verdicts | None:
    """The latest verdict of every check of every partition, read from the embedded instance.

    Args:
        dagster_home: the instance folder.

    Returns:
        ``(family, md5) → {"asset:check": passed}`` (None for a check planned in a run that
        gave no verdict: in progress, or its asset never built); None when the instance is not
        genoflow's embedded one or its event database cannot be read as expected.
    """
    config = dagster_home / "dagster.yaml"
    database = dagster_home / "history" / "runs" / "index.db"
    try:
        if not config.is_file():
            return {}  # no instance yet: nothing was ever checked
        if config.read_text() != dagster_yaml(dagster_home):
            return None
        if not database.is_file():
            return {}
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute(_CHECKS_QUERY).fetchall()
    except (OSError, sqlite3.Error):
        return None
    verdicts: Verdicts = {}
    for asset_key, check, md5, status in rows:
        path = json.loads(asset_key)
        if len(path) == 2 and path[0] in CHAINS and CHECKS.get(path[1]) == check and md5:
            verdicts.setdefault((path[0], md5), {})[f"{path[1]}:{check}"] = VERDICT.get(status)
    return verdicts
