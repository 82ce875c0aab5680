"""Pure file transforms (pysam / htslib, GNU sort): path in, paths out, no Dagster."""
