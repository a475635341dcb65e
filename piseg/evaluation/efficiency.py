"""The efficiency table (paper Table XII): parameters, compute at training and evaluation, memory and FPS at
600x800, for Pi-Seg and the CAT-Seg baseline, on whatever device is present (random weights).

Like for like with the paper: compute is in multiply-adds (GMACs, as fvcore counts; torch's counter gives 2
FLOPs per multiply-add), training compute is per step (the whole batch, text encoder once), and the memory
measured here is inference memory, which is not the paper's peak training memory, so each says what it is."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch

from piseg.config import PiSegConfig
from piseg.evaluation.counts import eval_flops, gmacs, meta_model, train_flops, variant
from piseg.inference.scheme import sliding_window_probabilities
from piseg.modeling.model import build_model, parameter_counts


@dataclass
class EfficiencyRow:
    model: str
    parameters: int
    train_gmacs_per_step: float  # one training step of `batch_size` crops
    eval_gmacs: float  # one 600x800 image, sliding window
    inference_memory_gb: float  # what `memory_kind` says, during inference
    fps: float
    batch_size: int
    memory_kind: str


def memory_kind(device: torch.device) -> str:
    """What the measured memory figure is on DEVICE (never the paper's peak training memory)."""
    if device.type == "cuda":
        return "inference peak GPU memory allocated by torch"
    return "inference peak process RSS (everything loaded)"


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
        batch = config.train.batch_size
        train_gmacs = gmacs(train_flops(counted, config.train.crop, classes, batch))
        eval_gmacs = gmacs(eval_flops(counted, config.eval, classes=classes))
        model = build_model(model_config).to(device).eval()
        with torch.no_grad():
            text = model.encode_classes([f"class {i}" for i in range(classes)])
        image = torch.rand(3, 600, 800, device=device) * 255
        seconds, peak = timed_inference(model, image, text, config, device, repeats)
        rows.append(
            EfficiencyRow(name, parameters, train_gmacs, eval_gmacs, peak, 1 / seconds, batch, memory_kind(device))
        )
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
