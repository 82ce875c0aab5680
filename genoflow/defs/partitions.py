"""One dynamic partitions definition per family, keyed by source md5."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

from genoflow.build.steps import CHAINS

PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    family: DynamicPartitionsDefinition(name=f"{family}_md5") for family in CHAINS
}
