"""Pi-Seg: model, shard reader, trainer, evaluation and benchmarks.

modeling/    the network: CLIP backbone, SPMs, cost aggregation, prompts (`build_model(config)`)
inference/   the test-time scheme (sliding window, whole image) and open-vocabulary prediction
training/    the trainer and its batches from the build's shards
evaluation/  benchmark datasets, metrics, reports beside the paper's numbers, `piseg reproduce`, efficiency
released/    converting the authors' released detectron2 weights
config.py, checkpoint.py, faults.py, cli.py: shared by all of them
"""
