"""Pi-Seg: model, shard reader, trainer, evaluation and benchmarks."""
