"""Which Dagster executor runs the steps of a launched run, chosen by ``GENOFLOW_EXECUTOR``.

Invariant: the choice is made once, where :mod:`genoflow.definitions` builds ``Definitions``,
and only among Dagster's own executors — genoflow never schedules steps itself. Endpoints are
not read here: the Celery executor's broker and result backend are resolved from
``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` when a run starts (the same variables the
Celery workers read), so loading the definitions touches no network.

Runs made by ``genoflow run`` execute in process whatever is chosen here; the choice applies to
runs the daemon or the UI launch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, cast, get_args

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from genoflow.core.settings import executor_variable

ExecutorName = Literal["in_process", "multiprocess", "celery"]
EXECUTORS: tuple[str, ...] = get_args(ExecutorName)
DEFAULT_EXECUTOR: ExecutorName = "in_process"
BROKER_VARIABLE = "CELERY_BROKER_URL"
BACKEND_VARIABLE = "CELERY_RESULT_BACKEND"


def executor_name(environ: Mapping[str, str] | None = None) -> ExecutorName:
    """The executor ``GENOFLOW_EXECUTOR`` names (default ``in_process``).

    Raises:
        ValueError: the variable names no known executor.
    """
    name = executor_variable(environ) or DEFAULT_EXECUTOR
    if name not in EXECUTORS:
        raise ValueError(f"GENOFLOW_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {name!r}")
    return cast(ExecutorName, name)


def executor_from_env(environ: Mapping[str, str] | None = None) -> ExecutorDefinition:
    """The executor definition ``GENOFLOW_EXECUTOR`` chooses.

    - ``in_process`` (default): every step in the run's own process. One md5's chain is
      strictly sequential, so on one machine a process per step only adds start-ups.
    - ``multiprocess``: a process per step, Dagster's own default.
    - ``celery``: each step is a task on a Celery queue (dagster-celery, Redis broker), run by
      whichever worker takes it; workers hand artifacts to each other through replicas.

    Raises:
        ValueError: an unknown executor name, or ``celery`` without dagster-celery installed.
    """
    name = executor_name(environ)
    if name == "in_process":
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    return celery_executor()


def celery_executor() -> ExecutorDefinition:
    """dagster-celery's executor with its broker and backend taken from the environment.

    Raises:
        ValueError: dagster-celery is not installed.
    """
    try:
        from dagster_celery import celery_executor as base
    except ImportError as exc:
        raise ValueError(
            "GENOFLOW_EXECUTOR=celery needs dagster-celery: pip install 'genoflow[cluster]'"
        ) from exc
    return base.configured(
        {
            "broker": {"env": BROKER_VARIABLE},
            "backend": {"env": BACKEND_VARIABLE},
        },
        name="celery",
    )
