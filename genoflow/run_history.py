"""The embedded Dagster instance's successful chain runs, read without starting Dagster.

``genoflow run`` of a manifest that is already built should cost next to nothing, but importing
Dagster and opening its instance alone takes seconds. When the instance is the embedded one
(the ``dagster.yaml`` genoflow writes: SQLite run storage in ``history/runs.db``), the runs that
prove a chain up to date are read straight from that database, read-only, in one query. The
answer is the same as ``runner.up_to_date`` gets through Dagster's API (a test holds the two
together); for any other instance (PostgreSQL, a user's ``dagster.yaml``), or any surprise in the
file, the answer is None and ``genoflow run`` asks Dagster as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from genoflow.config import dagster_yaml
from genoflow.outcome import Outcome
from genoflow.pipeline import CHAINS, chain_version, job_name, key_for

# The tag genoflow puts on every run it launches: the code versions of the chain it built
# (``pipeline.chain_version``).
CHAIN_TAG = "genoflow/chain"

_QUERY = """
SELECT runs.partition, runs.run_id
FROM runs JOIN run_tags ON run_tags.run_id = runs.run_id
WHERE runs.pipeline_name = ? AND runs.status = 'SUCCESS'
  AND run_tags.key = ? AND run_tags.value = ?
ORDER BY runs.id DESC
"""


def successful_chain_runs(
    dagster_home: Path, families: Iterable[str]
) -> dict[tuple[str, str], str] | None:
    """The newest successful whole-chain run of each md5 at its family's current code versions.

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
                for md5, run_id in db.execute(_QUERY, query):
                    found.setdefault((family, md5), run_id)  # newest first
        return found
    except (OSError, sqlite3.Error):
        return None


def chains_up_to_date(
    succeeded: Mapping[tuple[str, str], str],
    lookup: Callable[[Any], Any],
    work: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], Outcome]:
    """The chains with nothing left to do, as ``cached`` outcomes.

    A chain is up to date when a whole-chain run of its current code versions succeeded for
    that md5 (so every step and blocking check passed) and every one of its artifacts is still
    in this node's cache, whole by its marker and sizes. Anything less (another version, a
    failed or partial run, an artifact only on a replica) must run.

    Args:
        succeeded: ``(family, md5) → run id`` of the successful whole-chain runs.
        lookup: this node's cache lookup (an artifact key → the artifact or None).
        work: ``(md5, family)`` pairs.
    """
    done: dict[tuple[str, str], Outcome] = {}
    for md5, family in work:
        run_id = succeeded.get((family, md5))
        if run_id is None:
            continue
        if all(lookup(key_for(family, md5, asset)) is not None for asset in CHAINS[family]):
            outcome = Outcome(md5, family, dict.fromkeys(CHAINS[family], "cached"))
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
    return None if succeeded is None else chains_up_to_date(succeeded, lookup, work)
