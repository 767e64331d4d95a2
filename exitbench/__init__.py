"""exitbench: an evaluation harness for dynamic-compute (early-exit, slimmable) speech models."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1  # bump when a Parquet table's columns change meaning; enters the run id
