"""Dagster definitions only: assets and their checks, the IO manager, resources, partitions, jobs,
sensors, schedules, automation, backfill, executors and tag names; :mod:`.location` assembles
them. Importing this package imports no Dagster, so the run-history fast path can read
:mod:`genoflow.defs.tags` without starting Dagster."""
