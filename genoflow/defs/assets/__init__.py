"""The Dagster surface: one chain of assets per family, with checks. No file-format logic."""

from genoflow.defs.assets.checks import family_checks
from genoflow.defs.assets.family import family_assets

__all__ = ["family_assets", "family_checks"]
