"""The code location's entry point (``[tool.dagster]``, ``workspace.yaml``, ``dagster dev -m``).

The definitions are assembled in :mod:`genoflow.defs.location`; this module only names them where
Dagster looks.
"""

from genoflow.defs.location import defs

__all__ = ["defs"]
