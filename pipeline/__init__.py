"""The build stages as plain functions over batches of tiles. Knows nothing of Prefect or Label Studio."""
