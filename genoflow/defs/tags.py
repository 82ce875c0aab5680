"""Every ``genoflow/*`` tag key genoflow puts on Dagster runs, assets and materializations.

Invariant: each key is spelled here once and nowhere else in the package; writers (the sensor,
the schedules, ``genoflow run``, the jobs and assets) and readers (the run-history fast path,
the abandoned-run sweep) use these constants. The values are wire names stored in the Dagster
instance, so renaming one orphans the runs already recorded under it. No dagster import: the
run-history fast path reads these keys without starting Dagster.
"""

from __future__ import annotations

# The code versions of the whole chain a run builds (``pipeline.chain_version``); a successful
# run carrying the current value proves its md5 up to date (``run_history``).
CHAIN_TAG = "genoflow/chain"
# What launched the run: the manifest sensor, a family's schedule or ``genoflow run``.
LAUNCHED_BY = "genoflow/launched_by"
# The LAUNCHED_BY value of the runs ``genoflow serve`` starts for a request that missed.
LAUNCHED_BY_SERVE = "genoflow serve"
# host:pid of the process executing the run in process; a run left STARTED by a dead one is failed.
OWNER = "genoflow/owner"
# host:pid of the run worker genoflow's run launcher forked for a daemon-launched run
# (genoflow/instance/launcher.py): what run monitoring probes and what ``terminate`` signals.
WORKER = "genoflow/worker"
# The family of a job, an asset, a run or a materialization (``alignments``, ``intervals``, ...).
FAMILY = "genoflow/family"
# The asset's name within its family's chain (``source``, ``sorted``, ...).
ASSET = "genoflow/asset"
# The format of the source file (``bam``, ``bed``, ...).
FORMAT = "genoflow/format"
# The manifest row's name of the source.
NAME = "genoflow/name"
# ``<manifest file name>:<line>`` of the row that asked for the run.
MANIFEST = "genoflow/manifest"
# Why a schedule relaunched a partition (missing, stale code version, failed check), truncated.
REASON = "genoflow/reason"
