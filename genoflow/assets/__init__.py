"""The Dagster surface: one chain of assets per family, with checks. No file-format logic."""

from genoflow.assets.checks import family_checks
from genoflow.assets.family import family_assets

__all__ = ["family_assets", "family_checks"]
