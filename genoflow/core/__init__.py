"""The foundation every layer may import: settings (every ``GENOFLOW_*`` variable is read in
:mod:`genoflow.core.settings`), formats, errors and checksums. Imports nothing else of genoflow,
and no Dagster."""
