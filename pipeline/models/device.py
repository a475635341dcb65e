"""Each model picks its device itself: CUDA when present, else the CPU."""

from __future__ import annotations

import torch


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
