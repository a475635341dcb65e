"""Training batches from the build's WebDataset shards: streamed, shuffled and augmented, deterministic by
seed, split over processes, and resumable at any batch.

Order: each epoch shuffles the shard list and then samples through a seeded buffer (both from
(seed, epoch)); the k-th sample of an epoch goes to process k % world. A sample's augmentation draws from
its own generator seeded by (seed, epoch, k), so the batches do not depend on the number of loader
workers, and resuming at batch b reproduces exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from piseg.config import TrainConfig
from pipeline.shards import IGNORE, ShardError, ShardReader, decode_sample


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, crop, crop) float32 on 0-255
    masks: torch.Tensor  # (B, crop, crop) int64, IGNORE where unlabelled
    keys: list[str]


def decode_training_sample(raw: dict, extension: str, classes: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The image and mask of one raw sample; masks must only hold class ids and IGNORE."""
    where = f"{raw.get('__url__', 'shard')}: sample {raw['__key__']}"
    try:
        sample = decode_sample(raw, extension)
    except OSError as error:
        raise ShardError(f"{where}: cannot decode ({error})") from error
    bad = np.setdiff1d(np.unique(sample.mask), [*range(classes), IGNORE])
    if bad.size:
        raise ShardError(f"{where}: mask values {bad.tolist()} outside the {classes} training classes (0-{classes - 1}, {IGNORE} = ignore)")
    if sample.mask.shape != sample.image.shape[:2]:
        raise ShardError(f"{where}: mask {sample.mask.shape} and image {sample.image.shape[:2]} differ in size")
    return sample.key, sample.image, sample.mask


def augment(image: np.ndarray, mask: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's augmentation: resize the short side (long side capped), random crop, colour jitter,
    horizontal flip, pad to the crop (image 128, mask IGNORE)."""
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
        brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
        picture = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(picture, brightness), contrast), saturation)
    if config.hflip and rng.random() < 0.5:
        picture, labels = TF.horizontal_flip(picture), TF.horizontal_flip(labels)
    pad = [0, 0, config.crop - picture.shape[-1], config.crop - picture.shape[-2]]
    if pad[2] or pad[3]:
        picture = TF.pad(picture, pad, fill=config.pad_image)
        labels = TF.pad(labels, pad, fill=IGNORE)
    return picture.float(), labels[0]


class TrainingStream(IterableDataset):
    """Endless batches for one process, starting at `start_batch` (its own batch count)."""

    def __init__(self, reader: ShardReader, config: TrainConfig, rank: int = 0, world: int = 1, start_batch: int = 0) -> None:
        super().__init__()
        self.paths = reader.shard_paths("train")
        self.extension = reader.manifest.get("image_format", "jpg")
        self.classes = len(reader.class_names)
        self.config, self.rank, self.world, self.start_batch = config, rank, world, start_batch
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
        self.per_process = config.batch_size // world
        self.batches_per_epoch = reader.sample_count("train") // world // self.per_process
        if self.batches_per_epoch == 0:
            raise ShardError(f"{reader.out_dir}: {reader.sample_count('train')} readable training samples, fewer than one "
                             f"batch of {self.per_process} per process × {world} processes")  # fmt: skip

    def epoch_samples(self, epoch: int) -> Iterator[dict]:
        """Raw (undecoded) samples of one epoch in this epoch's shuffled order."""
        paths = list(self.paths)
        random.Random(f"{self.config.seed}:shards:{epoch}").shuffle(paths)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(paths),
            wds.tarfile_to_samples(),
            wds.shuffle(self.config.shuffle_buffer, initial=self.config.shuffle_buffer,
                        rng=random.Random(f"{self.config.seed}:samples:{epoch}")),
        )  # fmt: skip
        return iter(pipeline)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch_index = self.start_batch
        while True:
            epoch, first = divmod(batch_index, self.batches_per_epoch)
            wanted = {b for b in range(first, self.batches_per_epoch) if (epoch * self.batches_per_epoch + b - self.start_batch) % workers == worker}
            pending: dict[int, list] = {}
            mine = -1  # index among this process's samples in the epoch
            for position, raw in enumerate(self.epoch_samples(epoch)):
                if position % self.world != self.rank:
                    continue
                mine += 1
                index, _ = divmod(mine, self.per_process)
                if index >= self.batches_per_epoch:
                    break
                if index not in wanted:
                    continue
                key, image, mask = decode_training_sample(raw, self.extension, self.classes)
                rng = np.random.default_rng([self.config.seed, epoch, position])
                pending.setdefault(index, []).append((key, *augment(image, mask, self.config, rng)))
                if len(pending[index]) == self.per_process:
                    items = pending.pop(index)
                    yield Batch(torch.stack([i[1] for i in items]), torch.stack([i[2] for i in items]), [i[0] for i in items])
            batch_index = (epoch + 1) * self.batches_per_epoch


def training_batches(stream: TrainingStream, workers: int) -> Iterator[Batch]:
    """Batches in order through a DataLoader (workers decode in parallel; order is unchanged)."""
    loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                        collate_fn=lambda batch: batch)  # fmt: skip
    return iter(loader)

