"""Content-addressed cache, atomic publish and the source registry. No Dagster here."""
