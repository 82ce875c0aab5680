"""What each asset does, as plain functions over the cache: stage a source, sort it, index it,
check it. One object per family says how its artifacts are sorted, indexed and checked. May import
manifests, storage, processors and core; never Dagster."""
