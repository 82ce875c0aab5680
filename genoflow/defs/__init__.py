"""Dagster definitions' layer (design §3). Importing this package imports no dagster, so the
run-history fast path can read :mod:`genoflow.defs.tags` without starting Dagster; the other
definition modules move here with the layout change."""
