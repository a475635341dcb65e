"""The GPU check of issue 15 (item 13), one script within 8 minutes: real-size Pi-Seg (random CLIP weights, no
download) on whatever CUDA card is present, against the paper's Table XII (4 NVIDIA H100).

  1. training it/s at batch 8 (384 crops, 35 classes, the full step: text encoder, SPMs, BCE, clipping, AdamW)
     in the released precision (fp32 with TF32 matmuls) and with bf16 autocast (`train.amp`), with the peak
     memory and the loss over the timed steps (random data: the curve says only that both precisions train);
  2. evaluation at 600x800 (sliding window, 35 classes): FPS and peak memory of Pi-Seg and the CAT-Seg
     baseline, parameters and GFLOPs, through `piseg.evaluation.efficiency.measure` (what `piseg bench` prints).

Each part is skipped with a note once the time budget is spent, so the script always finishes and prints.
Usage: python benchmarks/gpu_check.py [--backbone vit-b] [--steps 30] [--budget-s 480] [--out gpu_check.json] [--smoke]
(--smoke: the tiny backbone on the CPU, one step and one evaluation of each, no file written: the same code in
seconds, to check the script itself.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from _shared import parse_args

from piseg.config import preset
from piseg.evaluation.efficiency import device_name, measure
from piseg.evaluation.paper import efficiency_row
from piseg.modeling.model import build_model
from piseg.training.train import TrainForward, cosine_schedule, parameter_groups, precision, segmentation_loss

CLASSES = 35


def training_speed(backbone: str, amp: bool, device: torch.device, steps: int, warmup: int, batch: int) -> dict:
    """it/s of full training steps on random crops, peak memory and the loss at the first and last timed step."""
    config = preset(backbone)
    config.model = dataclasses.replace(config.model, clip=None)
    config.train = dataclasses.replace(config.train, amp=amp, batch_size=batch)
    torch.manual_seed(0)
    model = build_model(config.model).to(device).train()
    forward = TrainForward(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    scheduler = cosine_schedule(optimizer, config.train.iters)
    tokens = {
        k: v.to(device)
        for k, v in model.backbone.tokenize(model.prompts([f"class {i}" for i in range(CLASSES)])).items()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    crop = config.train.crop
    images = torch.rand(batch, 3, crop, crop, device=device) * 255
    masks = torch.randint(0, CLASSES, (batch, crop, crop), device=device)
    losses, started = [], 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            started = time.perf_counter()
        generator = torch.Generator(device).manual_seed(step)
        with precision(config.train, device):
            output = forward(images, tokens["input_ids"], tokens["attention_mask"], generator)
            loss = segmentation_loss(output.logits.float(), masks, config.train.ignore_mode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.train.grad_clip)
        optimizer.step()
        scheduler.step()
        if step >= warmup:
            losses.append(loss.item())
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    return {
        "precision": "bf16 autocast" if amp else "fp32 + TF32",
        "it_per_s": steps / seconds,
        "peak_memory_gb": peak,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "steps": steps,
        "batch": batch,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20, help="timed evaluations per model")
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    smallest = {"backbone": "tiny", "device": "cpu", "steps": 1, "warmup": 1, "batch": 1, "repeats": 1}
    args = parse_args(parser, **smallest, out=Path(os.devnull))
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")  # TF32, as the released training and `piseg train` on CUDA
    torch.backends.cudnn.allow_tf32 = True
    began = time.perf_counter()
    result: dict = {
        "device": device_name(device),
        "backbone": args.backbone,
        "training": [],
        "evaluation": [],
        "skipped": [],
    }
    print(f"device: {result['device']}; backbone {args.backbone}; budget {args.budget_s:.0f} s")
    for amp in (False, True):
        if time.perf_counter() - began > args.budget_s * 0.6:
            result["skipped"].append(f"training, amp={amp}: time budget spent")
            continue
        row = training_speed(args.backbone, amp, device, args.steps, args.warmup, args.batch)
        result["training"].append(row)
        print(
            f"train {row['precision']:<14} {row['it_per_s']:6.2f} it/s at batch {row['batch']}, "
            f"peak {row['peak_memory_gb']:.2f} GB, "
            f"loss {row['loss_first']:.4f} -> {row['loss_last']:.4f} over {row['steps']} steps"
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if time.perf_counter() - began > args.budget_s * 0.8:
        result["skipped"].append("evaluation: time budget spent")
    else:
        for row in measure(preset(args.backbone), device, CLASSES, args.repeats):
            result["evaluation"].append(dataclasses.asdict(row))
    paper = efficiency_row(args.backbone) or {}
    print(
        f"\n{'600x800, ' + str(CLASSES) + ' classes':<28} {'params':>9} "
        f"{'GMACs train/step':>16} {'GMACs eval':>11} {'GB':>8} {'FPS':>7}"
    )
    for row in result["evaluation"]:
        print(
            f"{row['model'] + ' (here)':<28} {row['parameters'] / 1e6:>8.2f}M "
            f"{row['train_gmacs_per_step']:>16.2f} {row['eval_gmacs']:>11.2f} "
            f"{row['inference_memory_gb']:>8.2f} {row['fps']:>7.2f}"
        )
    for model, row in paper.items():
        print(
            f"{model + ' (paper, H100)':<28} {row['params_M']:>8.2f}M "
            f"{row['GFLOPs_train']:>16.2f} {row['GFLOPs_eval']:>11.2f} "
            f"{row['peak_mem_GB']:>8.2f} {row['FPS']:>7.2f}"
        )
    print(
        "GMACs here: multiply-adds (torch.utils.flop_counter / 2), training per step of the recipe's batch, as the "
        "paper's fvcore figures; GB here: inference memory (peak allocation on a GPU), the paper's: peak training "
        "memory."
    )
    for note in result["skipped"]:
        print(f"skipped: {note}")
    result["seconds"] = time.perf_counter() - began
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
