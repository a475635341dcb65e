"""Training batches from the build's WebDataset shards: streamed, shuffled and augmented, deterministic by
seed, split over processes, and resumable at any batch.

Unreadable data never raises inside the loader (where a worker's error would reach the user as a
traceback): a sample that cannot be decoded, or a shard member that cannot be read, is left out of its
batch and its reason travels with the batch (`Batch.skipped`); the trainer then stops or counts it, as
`on_corrupt_shard` says. A batch whose every sample is unreadable arrives empty.

Order: the released sampler's full random permutation per epoch. The build writes samples to shards in a
seeded random order; each epoch shuffles the shard list and then samples through a seeded buffer (both
from (seed, epoch)). A buffer holding the whole training split makes the epoch a full random permutation;
a smaller one only mixes samples within about a buffer's length of the shuffled shard order. Rule for its
size (`buffer_budget`): every training sample when their encoded bytes (the manifest's) fit the budget,
else as many as fit; the budget is `shuffle_memory_gb`, or by default half of this machine's physical
memory divided among the buffers on it (one per loader worker, or per process without workers, times the
processes on the machine): on a 128 GB machine, 64 GB over 1 process x 2 workers = 32 GB a buffer, over
4 processes x 2 workers = 8 GB. `order_statement` says at the start of training which case holds. The
k-th sample of an epoch goes to process k % world. A sample's augmentation draws from
its own generator seeded by (seed, epoch, k), so the batches do not depend on the number of loader
workers, and resuming at batch b reproduces exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.dataset.shards import ShardError, ShardReader, decode_sample
from piseg.config import TrainConfig
from taxonomy.masks import IGNORE_INDEX as IGNORE
from taxonomy.masks import values_outside


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, crop, crop) float32 on 0-255; B may be below the batch size, even 0
    masks: torch.Tensor  # (B, crop, crop) int64, IGNORE where unlabelled
    keys: list[str]
    skipped: list[str] = field(default_factory=list)  # why samples (or shard members) were left out


def make_batch(items: list[tuple[str, torch.Tensor, torch.Tensor]], skipped: list[str], crop: int) -> Batch:
    """A batch of the readable samples (possibly none) with the reasons for those left out."""
    if not items:
        return Batch(torch.empty(0, 3, crop, crop), torch.empty(0, crop, crop, dtype=torch.int64), [], skipped)
    return Batch(torch.stack([i[1] for i in items]), torch.stack([i[2] for i in items]), [i[0] for i in items], skipped)


def decode_training_sample(raw: dict, classes: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The image and mask of one raw sample; masks must only hold class ids and IGNORE."""
    where = f"{raw.get('__url__', 'shard')}: sample {raw['__key__']}"
    try:
        sample = decode_sample(raw)
    except ShardError as error:  # a missing part; its message names the sample
        raise ShardError(f"{raw.get('__url__', 'shard')}: {error}") from error
    except (OSError, ValueError) as error:  # truncated or foreign image bytes, a damaged JSON record
        raise ShardError(f"{where}: cannot decode ({error})") from error
    if bad := values_outside(sample.mask, classes):
        raise ShardError(
            f"{where}: mask values {bad} outside the {classes} training classes (0-{classes - 1}, {IGNORE} = ignore)"
        )
    if sample.mask.shape != sample.image.shape[:2]:
        raise ShardError(f"{where}: mask {sample.mask.shape} and image {sample.image.shape[:2]} differ in size")
    return sample.key, sample.image, sample.mask


# --- ColorAugSSD (detectron2's ColorAugSSDTransform, as the released configs set COLOR_AUG_SSD: True) ------

HSV_SHIFT = 12  # OpenCV's fixed-point 8-bit HSV conversion, reproduced so no OpenCV is needed
_INVERSE = np.arange(256, dtype=np.float64)
_S_DIV = np.rint(np.divide(255 << HSV_SHIFT, _INVERSE, out=np.zeros(256), where=_INVERSE > 0)).astype(np.int32)
_H_DIV = np.rint(np.divide(180 << HSV_SHIFT, 6 * _INVERSE, out=np.zeros(256), where=_INVERSE > 0)).astype(np.int32)


def rgb_to_hsv8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with H in [0, 180), bit-exact with cv2.cvtColor(COLOR_RGB2HSV)."""
    r, g, b = (image[..., i].astype(np.int32) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (HSV_SHIFT - 1)
    s = (diff * _S_DIV[v] + half) >> HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _H_DIV[diff] + half) >> HSV_SHIFT
    h += 180 * (h < 0)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (H in [0, 180)) -> uint8 RGB as cv2.cvtColor(COLOR_HSV2RGB)'s vector path computes it
    (float32, truncated). OpenCV's scalar code, which takes the last (width mod 16-64) pixels of each row,
    rounds instead: those pixels may differ by one level."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6 / 180)
    s, v = (hsv[..., i].astype(np.float32) * np.float32(1 / 255) for i in (1, 2))
    sector = np.floor(h)
    f = h - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))  # all within [0, v]: no clipping needed
    sector = sector.astype(np.uint8) % 6
    rgb = np.empty(hsv.shape, dtype=np.uint8)
    for channel, by_sector in enumerate(((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))):
        rgb[..., channel] = np.choose(sector, by_sector) * np.float32(255)
    return rgb


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 32,
    contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5),
    hue: int = 18,
) -> np.ndarray:
    """detectron2's ColorAugSSDTransform on a uint8 RGB image: each step with p = 0.5, brightness +U(-32, 32),
    then contrast xU(0.5, 1.5) either before or after saturation xU(0.5, 1.5) (in HSV) and hue +{-18..18}
    of 180, every step clipped and truncated to uint8 as the released pipeline does."""

    def convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(values.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)

    def contrast_step(picture: np.ndarray) -> np.ndarray:
        return convert(picture, alpha=rng.uniform(*contrast)) if rng.integers(2) else picture

    def saturation_step(picture: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return picture
        hsv = rgb_to_hsv8(picture)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(*saturation))
        return hsv8_to_rgb(hsv)

    def hue_step(picture: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return picture
        hsv = rgb_to_hsv8(picture)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue, hue + 1)) % 180
        return hsv8_to_rgb(hsv)

    if rng.integers(2):
        image = convert(image, beta=rng.uniform(-brightness, brightness))
    if rng.integers(2):
        return hue_step(saturation_step(contrast_step(image)))
    return contrast_step(hue_step(saturation_step(image)))


def augment(
    image: np.ndarray, mask: np.ndarray, config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's augmentation, in the released order: resize the short side (long side capped), random
    crop, ColorAugSSD (`color_jitter`), horizontal flip, pad to the crop (image 128, mask IGNORE)."""
    picture = torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()  # decoded arrays are read-only
    labels = torch.from_numpy(mask.astype(np.int64))[None]
    height, width = picture.shape[-2:]
    scale = min(config.resize_short / min(height, width), config.max_long / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    picture = TF.resize(picture, size, antialias=True)
    labels = TF.resize(labels, size, interpolation=TF.InterpolationMode.NEAREST)
    top = int(rng.integers(0, max(size[0] - config.crop, 0) + 1))
    left = int(rng.integers(0, max(size[1] - config.crop, 0) + 1))
    picture = picture[:, top : top + config.crop, left : left + config.crop]
    labels = labels[:, top : top + config.crop, left : left + config.crop]
    if config.color_jitter:
        picture = torch.from_numpy(color_aug_ssd(picture.permute(1, 2, 0).numpy(), rng)).permute(2, 0, 1)
    if config.hflip and rng.random() < 0.5:
        picture, labels = TF.horizontal_flip(picture), TF.horizontal_flip(labels)
    pad = [0, 0, config.crop - picture.shape[-1], config.crop - picture.shape[-2]]
    if pad[2] or pad[3]:
        picture = TF.pad(picture, pad, fill=config.pad_image)
        labels = TF.pad(labels, pad, fill=IGNORE)
    return picture.float(), labels[0]


MEMORY_SHARE = 0.5  # of physical memory, for all shuffle buffers together (the rest: model, decoding, the OS)


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def buffer_budget(config: TrainConfig, local_processes: int) -> float:
    """Bytes one shuffle buffer may hold: `shuffle_memory_gb`, or MEMORY_SHARE of physical memory over the
    buffers on this machine (each process keeps one per loader worker, or one without workers). Why from
    memory: a fixed cap (formerly 2 GB) holds only part of an OVRSIS95K-sized split, and the epoch stops
    being a full permutation without anyone asking for that."""
    if config.shuffle_memory_gb is not None:
        return config.shuffle_memory_gb * 2**30
    return MEMORY_SHARE * physical_memory() / (local_processes * max(config.workers, 1))


def data_sized_buffer(reader: ShardReader, budget: float) -> int:
    """Every training sample, unless their encoded bytes exceed `budget`: then as many as fit."""
    samples, size = reader.sample_count("train"), reader.split_bytes("train")
    fitting = int(budget * samples / size) if size else samples
    return max(1, min(samples, fitting))


def order_statement(stream: TrainingStream, reader: ShardReader) -> str:
    """One line for the start of training: whether an epoch is a full random permutation, with the buffer and
    split sizes (the manifest's bytes) it follows from, and what to change when it is not."""
    samples, size = reader.sample_count("train"), reader.split_bytes("train")
    held = f"the shuffle buffer holds {stream.buffer:,} of {samples:,} training samples"
    if stream.buffer >= samples:
        return f"sample order: {held} ({size / 2**30:.2f} GB): each epoch is a full random permutation"
    shards = len(stream.paths)
    return (
        f"sample order: {held} (budget {stream.budget / 2**30:.2f} GB a buffer, split {size / 2**30:.2f} GB): an "
        f"epoch is NOT a full random permutation; samples mix within about {stream.buffer:,} samples "
        f"(~{stream.buffer * shards / max(samples, 1):.1f} of {shards} shards) of the shuffled shard order. "
        "Raise train.shuffle_memory_gb, or use fewer loader workers or a machine with more memory."
    )


class TrainingStream(IterableDataset):
    """Endless batches for one process, starting at `start_batch` (its own batch count)."""

    def __init__(
        self, reader: ShardReader, config: TrainConfig, rank: int = 0, world: int = 1, start_batch: int = 0
    ) -> None:
        super().__init__()
        self.paths = reader.shard_paths("train")
        self.classes = len(reader.class_names)
        self.config, self.rank, self.world, self.start_batch = config, rank, world, start_batch
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
        self.per_process = config.batch_size // world
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))  # processes on this machine (torchrun sets it)
        self.budget = buffer_budget(config, local)
        self.buffer = config.shuffle_buffer or data_sized_buffer(reader, self.budget)
        self.batches_per_epoch = reader.sample_count("train") // world // self.per_process
        if self.batches_per_epoch == 0:
            raise ShardError(
                f"{reader.out_dir}: {reader.sample_count('train')} readable training samples, fewer than one "
                f"batch of {self.per_process} per process × {world} processes"
            )

    def epoch_samples(self, epoch: int, faults: list[str]) -> Iterator[dict]:
        """Raw (undecoded) samples of one epoch in this epoch's shuffled order; a shard that cannot be read
        as a tar adds its reason to `faults` and the epoch goes on."""
        paths = list(self.paths)
        random.Random(f"{self.config.seed}:shards:{epoch}").shuffle(paths)

        def record(error: Exception) -> bool:
            where = error.args[-1] if len(error.args) > 1 else "a shard"  # webdataset appends the shard's URL
            faults.append(
                f"{where}: unreadable shard data ({type(error).__name__}: {error.args[0] if error.args else error})"
            )
            return True

        pipeline = wds.DataPipeline(
            wds.SimpleShardList(paths),
            wds.tarfile_to_samples(handler=record),
            wds.shuffle(self.buffer, initial=self.buffer, rng=random.Random(f"{self.config.seed}:samples:{epoch}")),
        )
        return iter(pipeline)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch_index = self.start_batch
        while True:
            epoch, first = divmod(batch_index, self.batches_per_epoch)
            wanted = [
                b
                for b in range(first, self.batches_per_epoch)
                if (epoch * self.batches_per_epoch + b - self.start_batch) % workers == worker
            ]
            pending: dict[int, tuple[list, list[str]]] = {index: ([], []) for index in wanted}
            faults: list[str] = []  # shard-level, attached to the next batch out
            mine = -1  # index among this process's samples in the epoch
            for position, raw in enumerate(self.epoch_samples(epoch, faults)):
                if position % self.world != self.rank:
                    continue
                mine += 1
                index, _ = divmod(mine, self.per_process)
                if index >= self.batches_per_epoch:
                    break
                if index not in pending:
                    continue
                items, skipped = pending[index]
                try:
                    key, image, mask = decode_training_sample(raw, self.classes)
                except ShardError as error:
                    skipped.append(str(error))
                else:
                    rng = np.random.default_rng([self.config.seed, epoch, position])
                    items.append((key, *augment(image, mask, self.config, rng)))
                if len(items) + len(skipped) == self.per_process:
                    del pending[index]
                    yield make_batch(items, skipped + faults, self.config.crop)
                    faults.clear()
            # batches the shards ran short of (a member lost): still yielded, in order, so batch b stays step b
            for index, (items, skipped) in sorted(pending.items()):
                lost = (
                    f"{self.per_process - len(items) - len(skipped)} sample(s) of batch {index} missing: the shards "
                    f"hold fewer training samples than the manifest counts"
                )
                yield make_batch(items, skipped + faults + [lost], self.config.crop)
                faults.clear()
            batch_index = (epoch + 1) * self.batches_per_epoch


def training_batches(stream: TrainingStream, workers: int) -> Iterator[Batch]:
    """Batches in order through a DataLoader (workers decode in parallel; order is unchanged)."""
    loader = DataLoader(
        stream, batch_size=None, num_workers=workers, persistent_workers=False, collate_fn=lambda batch: batch
    )
    return iter(loader)
