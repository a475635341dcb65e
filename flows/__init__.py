"""Prefect flows wiring the pipeline stages, and the `ovrsis` command line (the only importer of prefect)."""
