"""Training Pi-Seg on the build's shards: the trainer (`train`) and its augmented batches (`batches`)."""
