"""Segmentation metrics from a streaming confusion matrix (torch; runs on the GPU when the data is there).

Rule for classes absent from the ground truth (docs/piseg.md, "Metrics": the released numbers depend on it). Default
("exclude"): a class with no ground-truth pixels in a dataset is left out of mIoU and mACC, whatever was
predicted; its false positives still cost the true classes, as their false negatives. "include": a class
that never occurs but was predicted counts with IoU 0 in mIoU. mACC always averages present classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taxonomy.masks import IGNORE_INDEX as IGNORE


@dataclass
class Scores:
    iou: list[float | None]  # per class; None for classes left out by the absent-class rule
    acc: list[float | None]
    miou: float
    macc: float
    pixel_accuracy: float
    present: list[bool]  # class occurs in the ground truth


class ConfusionMatrix:
    """Rows = ground truth, columns = prediction; pixels labelled `ignore` are not counted."""

    def __init__(self, classes: int, ignore: int = IGNORE, device: torch.device | str = "cpu") -> None:
        self.classes, self.ignore = classes, ignore
        self.matrix = torch.zeros(classes, classes, dtype=torch.int64, device=device)

    @classmethod
    def from_counts(cls, counts: list[list[int]], ignore: int = IGNORE) -> ConfusionMatrix:
        """A matrix saved with `.matrix.tolist()` (e.g. a finished dataset's result file)."""
        confusion = cls(len(counts), ignore)
        confusion.matrix = torch.tensor(counts, dtype=torch.int64)
        return confusion

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        target = target.to(self.matrix.device).flatten().long()
        prediction = prediction.to(self.matrix.device).flatten().long()
        keep = target != self.ignore
        target, prediction = target[keep], prediction[keep]
        if target.numel() and (int(target.max()) >= self.classes or int(target.min()) < 0):
            raise ValueError(
                f"ground-truth values {sorted(set(target.unique().tolist()) - set(range(self.classes)))} "
                f"outside 0-{self.classes - 1} (and {self.ignore})"
            )
        self.matrix += torch.bincount(target * self.classes + prediction, minlength=self.classes**2).view(
            self.classes, self.classes
        )

    def scores(self, absent: str = "exclude") -> Scores:
        matrix = self.matrix.double()
        tp = matrix.diag()
        gt = matrix.sum(dim=1)
        predicted = matrix.sum(dim=0)
        union = gt + predicted - tp
        present = gt > 0
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.zeros_like(tp))
        acc = torch.where(present, tp / gt.clamp(min=1), torch.zeros_like(tp))
        if absent == "exclude":
            counted = present
        elif absent == "include":
            counted = present | (predicted > 0)
        else:
            raise ValueError(f"absent must be 'exclude' or 'include', got {absent!r}")
        miou = float(iou[counted].mean()) if counted.any() else float("nan")
        macc = float(acc[present].mean()) if present.any() else float("nan")
        total = matrix.sum()
        return Scores(
            iou=[float(v) if c else None for v, c in zip(iou.tolist(), counted.tolist())],
            acc=[float(v) if c else None for v, c in zip(acc.tolist(), present.tolist())],
            miou=miou,
            macc=macc,
            pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
            present=present.tolist(),
        )
