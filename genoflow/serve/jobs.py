"""``GET /jobs/{id}``, and how a request that missed is answered while its build runs.

Invariant: everything a job answer shows comes from the job's claim and its Dagster run's own
events (status, steps and their times, the failure's message), never from the request; the error
is the one redacted line :mod:`genoflow.serve.builds` stored, so no token ever appears here. An
id that is not a run id this server started answers 404, as JSON.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genoflow.core.errors import redact_text

if TYPE_CHECKING:  # builds imports Dagster: the app loads it only on a miss
    from genoflow.serve.builds import Builds, Job
    from genoflow.serve.catalog import Source

# Dagster run ids are UUIDs; anything else is answered without a lookup.
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Seconds a client is asked to wait before polling a job that is queued or running.
POLL_AFTER = {"queued": 5, "running": 2, "succeeded": 0}
CLOSED_RETRY_AFTER = 5  # seconds: a restarted server, or another one, takes the build


def routes() -> list[Route]:
    """The jobs endpoint, for the app's route list."""
    return [Route("/jobs/{id}", job_endpoint, methods=["GET"], name="job")]


async def job_endpoint(request: Request) -> Response:
    """``GET /jobs/{id}``: the job's status, steps with times, artifact URLs, redacted error,
    back-off and, when ``GENOFLOW_DAGSTER_URL`` is set, a link to its run in the Dagster UI."""
    builds: Builds = request.app.state.builds
    job_id = request.path_params["id"]
    job = await run_in_threadpool(builds.job, job_id) if RUN_ID.fullmatch(job_id) else None
    if job is None:
        return JSONResponse(
            {"error": "NotFound", "message": "no build job has this id"}, status_code=404
        )
    steps = await run_in_threadpool(builds.steps, job_id)
    body = job_body(job, builds.serve.dagster_url)
    body["steps"] = [
        {
            "step": step["step"],
            "status": step["status"],
            "started": _iso(step["started"]),
            "ended": _iso(step["ended"]),
        }
        for step in steps
    ]
    headers = {"Retry-After": str(POLL_AFTER[job.status])} if job.status in POLL_AFTER else {}
    return JSONResponse(body, headers={**headers, "Cache-Control": "no-store"})


def job_body(job: Job, dagster_url: str | None = None) -> dict[str, Any]:
    """A job as JSON: id, md5, family, status, artifact URLs, redacted error, back-off, and
    its Dagster UI run page when ``dagster_url`` is set."""
    body: dict[str, Any] = {
        "id": job.id,
        "md5": job.md5,
        "family": job.family,
        "status": job.status,
        "url": f"/jobs/{job.id}",
        "artifacts": {
            "data": f"/data/{job.md5}",
            "index": None if job.family == "passthrough" else f"/index/{job.md5}",
        },
        "error": redact_text(job.error) if job.error else None,
        "retry_at": _iso(job.retry_at),
    }
    if dagster_url:
        body["dagster_run"] = f"{dagster_url}/runs/{job.id}"
    return body


async def start_build(request: Request, source: Source) -> Job | Response:
    """Start (or join) the build of ``source``; while the server shuts down, the answer is
    ``503 Service Unavailable`` with ``Retry-After`` instead (another server, or this one once
    restarted, will build it)."""
    from genoflow.serve.builds import BuildsClosed

    try:
        return await run_in_threadpool(request.app.state.builds.request, source)
    except BuildsClosed:
        body = {"error": "ServiceUnavailable", "message": "the server is shutting down; ask again"}
        headers = {"Retry-After": str(CLOSED_RETRY_AFTER), "Cache-Control": "no-store"}
        return JSONResponse(body, status_code=503, headers=headers)


def miss_response(job: Job) -> Response:
    """The answer to a request whose artifact is not built yet.

    - queued or running (or just succeeded): ``202 Accepted`` with ``Location: /jobs/{id}``,
      ``Retry-After`` and the job as JSON;
    - failed, within its back-off: ``503 Service Unavailable`` with the job's error and
      ``Retry-After`` saying when a request may start a new attempt.
    """
    body = job_body(job)
    location = {"Location": body["url"], "Cache-Control": "no-store"}
    if job.status != "failed":
        headers = {**location, "Retry-After": str(POLL_AFTER.get(job.status, 5))}
        return JSONResponse(body, status_code=202, headers=headers)
    wait = max(0, math.ceil((job.retry_at or 0) - time.time()))
    body["message"] = f"the build failed; a new attempt may start in {wait} s"
    return JSONResponse(body, status_code=503, headers={**location, "Retry-After": str(wait)})


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")
