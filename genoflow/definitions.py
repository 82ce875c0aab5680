"""The one assembler: every asset, check, job and resource of genoflow."""

from __future__ import annotations

from dagster import Definitions

from genoflow.assets import family_assets, family_checks
from genoflow.io_manager import ArtifactIOManager
from genoflow.jobs import family_job
from genoflow.pipeline import CHAINS
from genoflow.resources import GenoflowResource

genoflow_resource = GenoflowResource()

defs = Definitions(
    assets=[asset for family in CHAINS for asset in family_assets(family)],
    asset_checks=[check for family in CHAINS for check in family_checks(family)],
    jobs=[family_job(family) for family in CHAINS],
    resources={
        "genoflow": genoflow_resource,
        "artifact_io_manager": ArtifactIOManager(genoflow=genoflow_resource),
    },
)
