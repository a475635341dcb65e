"""The efficiency table (paper Table XII): parameters, GFLOPs at training and evaluation, peak memory and
FPS at 600x800, for Pi-Seg and the CAT-Seg baseline, on whatever device is present (random weights)."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch

from piseg.config import PiSegConfig
from piseg.evaluation.counts import eval_flops, meta_model, train_flops, variant
from piseg.inference.scheme import sliding_window_probabilities
from piseg.modeling.model import build_model, parameter_counts


@dataclass
class EfficiencyRow:
    model: str
    parameters: int
    train_gflops: float
    eval_gflops: float
    peak_memory_gb: float
    fps: float


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def measure(config: PiSegConfig, device: torch.device, classes: int = 35, repeats: int = 3) -> list[EfficiencyRow]:
    rows = []
    for name, perturbation in (("Pi-Seg", True), ("CAT-Seg baseline", False)):
        model_config = variant(config.model, perturbation)
        counted = meta_model(model_config)
        parameters = parameter_counts(counted)[0]
        train_gflops = train_flops(counted, config.train.crop, classes) / 1e9
        eval_gflops = eval_flops(counted, config.eval, classes=classes) / 1e9
        model = build_model(model_config).to(device).eval()
        with torch.no_grad():
            text = model.encode_classes([f"class {i}" for i in range(classes)])
        image = torch.rand(3, 600, 800, device=device) * 255
        seconds, peak = timed_inference(model, image, text, config, device, repeats)
        rows.append(EfficiencyRow(name, parameters, train_gflops, eval_gflops, peak, 1 / seconds))
        del model
    return rows


def timed_inference(model, image, text, config: PiSegConfig, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds per image after a warm-up, and peak memory in GB (CUDA: allocated by torch;
    CPU: the process's peak resident set, which includes everything loaded)."""
    run = lambda: sliding_window_probabilities(model, image, text, config.eval)  # noqa: E731
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return statistics.median(times), peak
