"""The Pi-Seg trainer: the paper's recipe on the build's shards, on one process or many (`torchrun`).

Every step re-encodes the class prompts through the partly trained text encoder, runs the model with
the SPMs on, takes binary cross-entropy against one-hot targets, clips the full gradient norm and steps
AdamW (CLIP's q/v projections at 0.01 x the rate) on a cosine schedule. Validation runs the exact
sliding-window inference of the final evaluation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ovrsis.errors import TrainingError
from pipeline.dataset.shards import ShardError, ShardReader
from piseg.checkpoint import (
    CheckpointError,
    configuration_differences,
    read_checkpoint,
    restore_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from piseg.config import PiSegConfig, TrainConfig
from piseg.evaluation.metrics import ConfusionMatrix
from piseg.faults import SKIPPED_FILE, SkippedLog
from piseg.inference.scheme import predict_mask
from piseg.modeling.model import PiSeg, PiSegOutput, build_model
from piseg.training.batches import Batch, TrainingStream, order_statement, training_batches
from taxonomy.loader import load_taxonomy
from taxonomy.masks import IGNORE_INDEX as IGNORE


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_runtime() -> Runtime:
    """One process, or one of `torchrun`'s (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as the released training
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device)


class TrainForward(nn.Module):
    """Text encoding + model in one forward, so DDP sees every trained parameter used by the step."""

    def __init__(self, model: PiSeg) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None,
    ) -> PiSegOutput:
        text = self.model.backbone.encode_text(input_ids, attention_mask).unsqueeze(1)
        return self.model(images, text, generator)


def parameter_groups(model: PiSeg, config: PiSegConfig) -> list[dict[str, Any]]:
    """CLIP q/v at lr x multiplier; the rest at lr; no weight decay on normalisation layers."""
    train = config.train
    norm_parameters = {
        id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for p in m.parameters()
    }
    clip, decayed, undecayed = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("backbone."):
            clip.append(parameter)
        elif id(parameter) in norm_parameters:
            undecayed.append(parameter)
        else:
            decayed.append(parameter)
    return [
        {"params": clip, "lr": train.lr * train.clip_lr_multiplier, "weight_decay": train.weight_decay},
        {"params": decayed, "lr": train.lr, "weight_decay": train.weight_decay},
        {"params": undecayed, "lr": train.lr, "weight_decay": 0.0},
    ]


def cosine_schedule(optimizer: torch.optim.Optimizer, iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, iters) / iters))
    )


def precision(config: TrainConfig, device: torch.device) -> AbstractContextManager:
    """The forward's precision: fp32 (TF32 matmuls on CUDA, set by `start_runtime`) as the released training,
    or bfloat16 autocast with `amp` (faster, and a different loss curve: an option, not the recipe)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else nullcontext()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_mode: str) -> torch.Tensor:
    """BCE with logits against one-hot targets at the crop's size. Ignore pixels are all-zero targets
    ("negative", the released code) or left out ("exclude")."""
    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    classes = logits.shape[1]
    valid = masks != IGNORE
    target = F.one_hot(torch.where(valid, masks, 0), classes).permute(0, 3, 1, 2).to(logits.dtype)
    target = target * valid[:, None]
    if ignore_mode == "negative":
        return F.binary_cross_entropy_with_logits(logits, target)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = valid[:, None].expand_as(losses).to(losses.dtype)
    return (losses * weight).sum() / weight.sum().clamp(min=1)


@torch.no_grad()
def perturbation_statistics(output: PiSegOutput, masks: torch.Tensor, world: int = 1) -> dict[str, float]:
    """Figure 10's statistics of delta = perturbed cost - cost before the image perturbation (both with the
    perturbed text: `PiSegOutput.clean_cost`), as the released code computes them:
    delta averaged over prompts and upsampled bilinearly to the labels; for every class present in an
    image, gt_in = its delta inside its ground-truth region and non_gt = its delta on the image's other
    labelled pixels; means over all such pixels of the batch (of every process); gap = gt_in - non_gt;
    align_ratio = gt_in / (|non_gt| + 1e-6). Positive gap: the perturbation leans towards the right class."""
    if output.clean_cost is None:
        return {}
    delta = (output.cost - output.clean_cost).mean(dim=1).float()  # (B, T, g, g)
    delta = F.interpolate(delta, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    classes = delta.shape[1]
    valid = masks != IGNORE
    inside = F.one_hot(torch.where(valid, masks, classes), classes + 1)[..., :classes].permute(0, 3, 1, 2).bool()
    present = inside.flatten(2).any(dim=-1)[..., None, None]  # (B, T, 1, 1)
    outside = valid[:, None] & ~inside & present
    sums = torch.stack([(delta * inside).sum(), inside.sum(), (delta * outside).sum(), outside.sum()]).double()
    if world > 1:
        dist.all_reduce(sums)
    if sums[1] == 0:
        return {}
    gt_in, non_gt = float(sums[0] / sums[1]), float(sums[2] / sums[3].clamp(min=1))
    return {
        "gt_in_mean": gt_in,
        "non_gt_mean": non_gt,
        "gap": gt_in - non_gt,
        "align_ratio": gt_in / (abs(non_gt) + 1e-6),
    }


@torch.no_grad()
def validate(
    model: PiSeg, reader: ShardReader, config: PiSegConfig, class_names: list[str], device: torch.device
) -> dict[str, float]:
    """mIoU / mACC / pixel accuracy on the val split with the final evaluation's sliding-window scheme."""
    was_training = model.training
    model.eval()
    text = model.encode_classes(class_names)
    matrix = ConfusionMatrix(len(class_names), device=device)
    count = 0
    for sample in reader.samples("val"):
        if config.train.val_max_samples is not None and count >= config.train.val_max_samples:
            break
        image = torch.from_numpy(sample.image.copy()).permute(2, 0, 1).to(device)
        matrix.update(predict_mask(model, image, text, config.eval), torch.from_numpy(sample.mask.astype("int64")))
        count += 1
    model.train(was_training)
    if count == 0:
        return {}
    scores = matrix.scores()
    return {
        "val_miou": scores.miou,
        "val_macc": scores.macc,
        "val_pixel_accuracy": scores.pixel_accuracy,
        "val_samples": count,
    }


class RunLog:
    """JSON lines (always) and TensorBoard (when installed), written by the main process only."""

    def __init__(self, folder: Path, enabled: bool, resume: bool) -> None:
        self.enabled = enabled
        self.board = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            self.file = (folder / "log.jsonl").open("a" if resume else "w")  # a fresh run starts a fresh log
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                pass

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.board is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.board.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.board is not None:
                self.board.close()


def train(
    shards: Path,
    config: PiSegConfig,
    out: Path,
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    notice: Callable[[str], None] | None = None,
    init: Path | None = None,
) -> Path:
    """Train on `shards` and return the final checkpoint's path. `progress(step, total, values)` is
    called on the main process after every step (the CLI draws a bar with it). With
    `on_corrupt_shard: skip`, unreadable shards and samples are left out and listed in OUT/skipped.jsonl;
    otherwise the first one stops the run with a ShardError naming it. `notice(line)` gets, on the main
    process, what a user must know before the run goes on: whether an epoch is a full permutation (also in
    log.jsonl as `sample_order`). `init`: a checkpoint whose weights the model starts from (an audit round
    goes on from the previous round's model); a fresh optimizer and schedule, unlike `resume`."""
    runtime = start_runtime()
    torch.manual_seed(config.train.seed)
    expected = load_taxonomy(config.train.taxonomy).names if config.train.taxonomy else None
    reader = ShardReader(shards, expected_names=expected, on_corrupt=config.train.on_corrupt_shard)
    class_names = reader.class_names
    taxonomy_version = reader.manifest["taxonomy"]["version"]
    log = RunLog(out, runtime.main, resume)
    if runtime.main and not resume:
        (out / SKIPPED_FILE).unlink(missing_ok=True)  # a fresh run starts a fresh list
    if runtime.world > 1:
        dist.barrier()  # cleared before any process reads or writes it
    skipped = SkippedLog(out, fresh=False)
    if reader.corrupt:
        log.write(0, {"corrupt_shards": len(reader.corrupt), "corrupt": reader.corrupt})
        for path, problem in reader.corrupt.items():
            skipped.add(f"{path}: {problem}", path)
    model = build_model(config.model)
    if init is not None and not resume:
        restore_weights(model, read_checkpoint(init), init)
    model = model.to(runtime.device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    scheduler = cosine_schedule(optimizer, config.train.iters)
    step = 0
    last = out / "checkpoints" / "last.pt"
    if resume:
        step = resume_from(last, model, optimizer, scheduler, config, class_names)
    forward: nn.Module = TrainForward(model)
    if runtime.world > 1:
        # class-attention padding tokens go unused when there are at least pad_len classes
        forward = DistributedDataParallel(forward, find_unused_parameters=len(class_names) >= config.model.pad_len)
    stream = TrainingStream(reader, config.train, runtime.rank, runtime.world, start_batch=step)
    if runtime.main:
        statement = order_statement(stream, reader)
        log.write(step, {"sample_order": statement, "full_permutation": stream.buffer >= reader.sample_count("train")})
        if notice is not None:
            notice(statement)
    batches = training_batches(stream, config.train.workers)
    tokens = {k: v.to(runtime.device) for k, v in model.backbone.tokenize(model.prompts(class_names)).items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = precision(config.train, runtime.device)
    started, started_step, empty_in_a_row = time.perf_counter(), step, 0
    values: dict[str, float] = {"loss": float("nan"), "it_per_s": 0.0}
    while step < config.train.iters:
        batch: Batch = next(batches)
        account_for_skipped(batch, config.train.on_corrupt_shard, skipped)
        trained = samples_everywhere(batch, runtime)  # if not, a step without an update, so batch b stays step b
        empty_in_a_row = 0 if trained else empty_in_a_row + 1
        if empty_in_a_row >= stream.batches_per_epoch:
            raise ShardError(f"{shards}: no readable training sample in a whole epoch; reasons in {skipped.path}")
        if trained:
            generator = torch.Generator(runtime.device).manual_seed(
                config.train.seed * 1_000_003 + step * runtime.world + runtime.rank
            )
            images, masks = batch.images.to(runtime.device), batch.masks.to(runtime.device)
            with autocast:
                output = forward(images, tokens["input_ids"], tokens["attention_mask"], generator)
                loss = segmentation_loss(output.logits.float(), masks, config.train.ignore_mode)
            mean_loss = loss.detach().clone()
            if runtime.world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= runtime.world
            if not torch.isfinite(mean_loss):
                raise TrainingError(
                    f"loss is {float(mean_loss)} at step {step + 1}; this process's batch: {batch.keys}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gradient_norm = torch.nn.utils.clip_grad_norm_(trainable, config.train.grad_clip)
            optimizer.step()
        scheduler.step()
        step += 1
        if trained:
            values = {
                "loss": float(mean_loss),
                "lr": scheduler.get_last_lr()[1],
                "grad_norm": float(gradient_norm),
                "it_per_s": (step - started_step) / (time.perf_counter() - started),
            }
            if step % config.train.log_every == 0 or step == config.train.iters:
                log.write(step, {**values, **perturbation_statistics(output, masks, runtime.world)})
        if runtime.main and (step % config.train.val_every == 0 or step == config.train.iters):
            log.write(step, validate(model, reader, config, class_names, runtime.device))
        if runtime.main and (step % config.train.checkpoint_every == 0 or step == config.train.iters):
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
            }
            save_checkpoint(last, model, config, class_names, taxonomy_version, state)
        if runtime.world > 1 and step % config.train.checkpoint_every == 0:
            dist.barrier()
        if runtime.main and progress is not None:
            progress(step, config.train.iters, values)
    final = out / "checkpoints" / "final.pt"
    if runtime.main:
        save_checkpoint(final, model, config, class_names, taxonomy_version)
    log.close()
    if runtime.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final


def account_for_skipped(batch: Batch, on_corrupt: str, skipped: SkippedLog) -> None:
    """Samples the loader left out: the first stops the run (on_corrupt_shard: error) or each is logged once."""
    if batch.skipped and on_corrupt != "skip":
        more = f" (+{len(batch.skipped) - 1} more in this batch)" if len(batch.skipped) > 1 else ""
        raise ShardError(f"{batch.skipped[0]}{more}; set train.on_corrupt_shard: skip to train without such samples")
    for reason in batch.skipped:
        skipped.add(reason)


def samples_everywhere(batch: Batch, runtime: Runtime) -> bool:
    """Whether every process has at least one sample this step (all must agree to step together under DDP)."""
    count = torch.tensor(len(batch.keys), device=runtime.device)
    if runtime.world > 1:
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return bool(count > 0)


def resume_from(
    path: Path,
    model: PiSeg,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: PiSegConfig,
    class_names: list[str],
) -> int:
    """Restore a run from its last checkpoint; the configuration and classes must be the same."""
    payload = read_checkpoint(path)
    if payload.get("training") is None:
        raise CheckpointError(f"{path}: has no training state (a final checkpoint cannot be resumed)")
    differences = configuration_differences(payload["config"], config)
    if differences:
        raise CheckpointError(f"{path}: written by another configuration: " + "; ".join(differences[:8]))
    if payload["class_names"] != class_names:
        raise CheckpointError(
            f"{path}: trained on {len(payload['class_names'])} other classes than these shards' {len(class_names)}"
        )
    restore_weights(model, payload, path)
    state = payload["training"]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
