"""What the run launcher's forkserver builds once, so that every worker forked from it starts
with genoflow's repository and jobs already resolved (imported by the forkserver only).

Invariant: importing this module only builds in-memory definitions; it opens no file, database
or connection, so nothing it leaves behind is unsafe to share across a fork.
"""

from __future__ import annotations

from genoflow.definitions import defs

# Dagster caches both on the objects; a run's code pointer finds the same ``defs`` in
# sys.modules, so a worker's job lookup is a dictionary read.
REPOSITORY = defs.get_repository_def()
JOBS = REPOSITORY.get_all_jobs()
