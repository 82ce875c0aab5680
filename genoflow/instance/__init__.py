"""The Dagster instance seen from outside the code location: its storages and ``dagster.yaml``,
the run history the CLI reads, and the runner that launches runs for ``genoflow run``."""
