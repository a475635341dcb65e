"""The confusion counter behind every mIoU in the repository: build quality (build_quality) and Pi-Seg's
evaluation and validation (piseg.evaluation.metrics).

Rows = ground truth, columns = prediction; pixels whose ground truth is the ignore value (255) are not counted.
The counts are numpy; `update` also takes torch tensors, counted where they live (the GPU, say) without this
module importing torch, and only the classes x classes counts come back.

Classes absent from the ground truth (docs/piseg.md, "Metrics": the released numbers depend on the rule):
"exclude" (the default, and build quality's rule) leaves a class with no ground-truth pixels out of mIoU and
mACC, whatever was predicted; its false positives still cost the true classes, as their false negatives.
"include" counts a class that never occurs but was predicted with IoU 0 in mIoU. mACC always averages the
present classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taxonomy.masks import IGNORE_INDEX as IGNORE

ABSENT_RULES = ("exclude", "include")


@dataclass
class Scores:
    iou: list[float | None]  # per class; None for classes left out by the absent-class rule
    acc: list[float | None]  # per class; None for classes absent from the ground truth
    miou: float  # nan when no class counts
    macc: float
    pixel_accuracy: float  # nan when no pixel was counted
    present: list[bool]  # class occurs in the ground truth


def flat_integers(values: Any) -> Any:
    """VALUES as one flat int64 row: a torch tensor stays a tensor on its device, anything else becomes numpy."""
    if hasattr(values, "bincount"):  # a torch tensor (numpy arrays have no such method)
        return values.flatten().long()
    return np.asarray(values).reshape(-1).astype(np.int64)


class Confusion:
    """A streaming confusion matrix over `classes` classes (rows = ground truth, columns = prediction)."""

    def __init__(self, classes: int, ignore: int = IGNORE) -> None:
        self.classes, self.ignore = classes, ignore
        self.matrix = np.zeros((classes, classes), dtype=np.int64)

    @classmethod
    def from_counts(cls, counts: list[list[int]], ignore: int = IGNORE) -> Confusion:
        """A matrix saved with `.matrix.tolist()` (e.g. a finished dataset's result file)."""
        confusion = cls(len(counts), ignore)
        confusion.matrix = np.array(counts, dtype=np.int64).reshape(len(counts), len(counts))
        return confusion

    def update(self, prediction: Any, target: Any) -> None:
        """Count one prediction against its ground truth: numpy arrays, or torch tensors on one device.
        A ground-truth value outside 0..classes-1 (other than `ignore`) is an error; predictions are not checked."""
        target, prediction = flat_integers(target), flat_integers(prediction)
        keep = target != self.ignore
        target, prediction = target[keep], prediction[keep]
        outside = (target < 0) | (target >= self.classes)
        if outside.any():
            raise ValueError(
                f"ground-truth values {sorted(set(target[outside].tolist()))} "
                f"outside 0-{self.classes - 1} (and {self.ignore})"
            )
        pairs = target * self.classes + prediction
        if isinstance(pairs, np.ndarray):
            counts = np.bincount(pairs, minlength=self.classes**2)
        else:
            counts = pairs.bincount(minlength=self.classes**2).cpu().numpy()
        self.matrix += counts.reshape(self.classes, self.classes)

    def scores(self, absent: str = "exclude") -> Scores:
        """IoU_c = TP/(TP+FP+FN) and ACC_c = TP/(TP+FN) per class, their means under the absent-class rule
        (module docstring), and pixel accuracy."""
        if absent not in ABSENT_RULES:
            raise ValueError(f"absent must be 'exclude' or 'include', got {absent!r}")
        matrix = self.matrix.astype(np.float64)
        tp = np.diag(matrix)
        gt, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
        union = gt + predicted - tp
        present = gt > 0
        iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
        acc = np.where(present, tp / np.maximum(gt, 1), 0.0)
        counted = present if absent == "exclude" else present | (predicted > 0)
        total = matrix.sum()
        return Scores(
            iou=[float(v) if c else None for v, c in zip(iou.tolist(), counted.tolist())],
            acc=[float(v) if c else None for v, c in zip(acc.tolist(), present.tolist())],
            miou=float(iou[counted].mean()) if counted.any() else float("nan"),
            macc=float(acc[present].mean()) if present.any() else float("nan"),
            pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
            present=present.tolist(),
        )
