"""Segmentation metrics: the repository's one confusion counter (pipeline.quality.confusion), counting on the
GPU when the data is there.

Rule for classes absent from the ground truth (docs/piseg.md, "Metrics": the released numbers depend on it). Default
("exclude"): a class with no ground-truth pixels in a dataset is left out of mIoU and mACC, whatever was
predicted; its false positives still cost the true classes, as their false negatives. "include": a class
that never occurs but was predicted counts with IoU 0 in mIoU. mACC always averages present classes.
"""

from __future__ import annotations

import torch

from pipeline.quality.confusion import Confusion, Scores
from taxonomy.masks import IGNORE_INDEX as IGNORE

__all__ = ["ConfusionMatrix", "Scores"]


class ConfusionMatrix(Confusion):
    """Rows = ground truth, columns = prediction; pixels labelled `ignore` are not counted. Tensors are counted
    on `device`; `.matrix` is numpy (classes x classes)."""

    def __init__(self, classes: int, ignore: int = IGNORE, device: torch.device | str = "cpu") -> None:
        super().__init__(classes, ignore)
        self.device = torch.device(device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        super().update(prediction.to(self.device), target.to(self.device))
