"""Manifests: reading and validating rows, the registry records they become, what changed
between two versions of a manifest, source URIs, and the watched manifest locations. May import
storage, processors and core; never Dagster."""
