"""Pi-Seg speed: tiny-model training it/s (CPU), full-size ViT-B forward latency at 384x384 for Pi-Seg
(SPMs on) against the CAT-Seg baseline (SPMs off) measured in one run, and, on a GPU, full-size ViT-B
training it/s at batch 8, eval FPS at 600x800 and peak memory (the paper: 66.89 FPS, 14.13 GB on an H100).

Random weights throughout (no download): speed does not depend on the weights' values.

    python benchmarks/bench_piseg.py [--classes 35] [--repeats 3] [--tiny-iters 60] [--backbone vit-b]
                                     [--skip-full] [--smoke]

(--smoke: 2 tiny training iterations, then the full-size part with the tiny backbone, once, 3 classes.)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _shared import parse_args

from piseg.config import preset
from piseg.evaluation.counts import variant
from piseg.evaluation.efficiency import timed_inference
from piseg.modeling.model import build_model
from piseg.training.synthetic import tiny_config, write_synthetic_shards
from piseg.training.train import parameter_groups, segmentation_loss, train


def tiny_training(iters: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        shards = write_synthetic_shards(Path(folder) / "build", count=40, size=96)
        config = tiny_config(
            iters=iters, batch_size=4, crop=64, resize_short=64, checkpoint_every=10_000, val_every=10_000
        )
        config.model = dataclasses.replace(config.model, clip_resolution=64, window_size=4)
        seen = []
        train(
            shards, config, Path(folder) / "run", progress=lambda step, total, values: seen.append(values["it_per_s"])
        )
        return seen[-1]


def elapsed(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up
    return statistics.median(elapsed(function, device) for _ in range(repeats))


def full_size(backbone: str, classes: int, repeats: int, device: torch.device) -> None:
    """Both models built first and timed alternately, so drift in the machine's speed hits both alike."""
    config = preset(backbone)
    images = torch.rand(1, 3, 384, 384, device=device) * 255
    models = {
        name: build_model(variant(config.model, perturbation)).to(device).train()
        for name, perturbation in (("Pi-Seg", True), ("CAT-Seg baseline", False))
    }
    text = torch.randn(classes, 1, models["Pi-Seg"].backbone.embed_dim, device=device)
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(images, text)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():
                samples[name].append(elapsed(lambda model=model: model(images, text), device))
    results = {name: statistics.median(times) for name, times in samples.items()}
    for name, seconds in results.items():
        print(
            f"{name}: {backbone} forward at 384x384, {classes} classes, "
            f"training mode, batch 1: {seconds * 1000:.0f} ms ({device})"
        )
    print(
        f"ratio Pi-Seg / baseline: {results['Pi-Seg'] / results['CAT-Seg baseline']:.3f} "
        f"(medians of {repeats} alternating runs)"
    )
    if device.type == "cuda":  # one model on the GPU at a time, so each peak memory is that model's alone
        for model in models.values():
            model.cpu()
        for name, model in models.items():
            torch.cuda.empty_cache()
            gpu_figures(model.to(device), config, classes, repeats, device, name)
            model.cpu()


def gpu_figures(model, config, classes: int, repeats: int, device: torch.device, name: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    names = [f"class {i}" for i in range(classes)]
    batch = torch.rand(8, 3, 384, 384, device=device) * 255
    masks = torch.randint(0, classes, (8, 384, 384), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = segmentation_loss(model(batch, model.encode_classes(names)).logits.float(), masks, "negative")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    seconds = timed(step, repeats * 3, device)
    print(f"{name}: training batch 8 at 384, {classes} classes, bf16: {1 / seconds:.2f} it/s")
    model.eval()
    with torch.no_grad():
        text = model.encode_classes(names)
    image = torch.rand(3, 600, 800, device=device) * 255
    seconds, peak = timed_inference(model, image, text, config, device, repeats * 5)
    print(
        f"{name}: eval 600x800 sliding window: {1 / seconds:.2f} FPS, "
        f"peak memory {peak:.2f} GB ({torch.cuda.get_device_name()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=35)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-iters", type=int, default=60)
    parser.add_argument("--backbone", default="vit-b", help="the full-size part's preset")
    parser.add_argument("--skip-full", action="store_true")
    args = parse_args(parser, classes=3, repeats=1, tiny_iters=2, backbone="tiny", skip_full=False)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    print(
        "tiny model training (batch 4, crop 64, 3 classes, CPU data pipeline): "
        f"{tiny_training(args.tiny_iters):.1f} it/s"
    )
    if not args.skip_full:
        full_size(args.backbone, args.classes, args.repeats, device)


if __name__ == "__main__":
    main()
