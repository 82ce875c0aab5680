"""genoflow: md5-partitioned Dagster assets for sorted, BGZF-compressed, indexed genomic files."""

__version__ = "0.1.0"
