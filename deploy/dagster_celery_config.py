"""Celery settings of genoflow's workers, which dagster-celery's app imports by this name.

Put this folder on the workers' ``PYTHONPATH`` and start them with
``celery -A dagster_celery.app worker``. The broker and the result backend are Celery's own
``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` variables, which the Celery executor of
genoflow's runs reads too, so workers and runs cannot disagree about the queue.

Invariant: a worker holds at most the task it is running, and acknowledges it only once the
step has ended, so a step whose worker vanished is never silently lost.
"""

from __future__ import annotations

import os

# One task at a time per pool process: a worker that prefetched several steps would keep them
# from an idle worker.
worker_prefetch_multiplier = 1

# Acknowledge a step when it ends. A pool process killed mid-step (the out-of-memory killer)
# fails its step with WorkerLostError rather than running it again on every worker in turn;
# a whole worker that vanishes leaves its step unacknowledged, and the broker hands it to another
# worker once the visibility timeout passes. Set that timeout above the longest step: a step
# still running when it passes is handed out a second time.
task_acks_late = True
task_reject_on_worker_lost = False
broker_transport_options = {
    "visibility_timeout": int(os.environ.get("GENOFLOW_CELERY_VISIBILITY_TIMEOUT") or 3600),
}

# Results are read by the run that submitted the step; a day is long enough for any run.
result_expires = 86400
worker_hijack_root_logger = False
