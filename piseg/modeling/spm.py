"""Pi-Seg's semantic-aware perturbation modules (SPM): learned, class-conditioned noise added to the text
and image features before the cost volume, during training only. They learn through the segmentation
loss alone (no extra term)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def unit_noise(
    shape: tuple[int, ...],
    family: str,
    df: float = 5.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Zero-mean, unit-variance noise of one family. Drawn through `generator` (inverse CDF or ratios of
    standard draws) so that training is reproducible per step and per process."""
    if family == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if family == "uniform":  # U(-sqrt 3, sqrt 3) has variance 1
        return (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * math.sqrt(3)
    if family == "laplace":  # scale b = 1/sqrt 2 gives variance 2 b^2 = 1
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype).clamp(1e-7, 1 - 1e-7) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)
    if family == "student-t":  # t = N / sqrt(chi2_df / df), variance df / (df - 2)
        normal = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        gamma = torch._standard_gamma(torch.full(shape, df / 2, device=device, dtype=dtype), generator=generator)
        t = normal / torch.sqrt(2 * gamma / df)
        return t / math.sqrt(df / (df - 2))
    raise ValueError(f"unknown noise family {family!r}")


class TextSPM(nn.Module):
    """T_hat = normalize(T) + |sigma| * Z + mu, with mu and sigma learned per channel; Z is drawn once per
    step for each class, prompt and channel, shared by the batch. No re-normalisation (the cost volume does)."""

    def __init__(self, channels: int, sigma_t: float, family: str, df: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(channels) * sigma_t)
        self.sigma = nn.Parameter(torch.randn(channels) * sigma_t)
        self.family, self.df = family, df

    def forward(self, text: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """text (T, P, C) -> perturbed (T, P, C)."""
        z = unit_noise(tuple(text.shape), self.family, self.df, generator, text.device, text.dtype)
        return F.normalize(text, dim=-1) + self.sigma.abs() * z + self.mu


class ImageSPM(nn.Module):
    """Per-pixel noise whose mean and scale come from cross-attention of the (detached) image features to
    the (detached) class embeddings: pixels are perturbed along what the classes say about them."""

    def __init__(self, channels: int, reduction: int, family: str, df: float) -> None:
        super().__init__()
        inner = channels // reduction
        self.q = nn.Linear(channels, inner)
        self.k = nn.Linear(channels, inner)
        self.v = nn.Linear(channels, inner)
        self.mu = nn.Linear(inner, channels)
        self.sigma = nn.Linear(inner, channels)
        self.family, self.df = family, df

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """image (B, C, H, W), text (T, P, C) -> perturbed image features (B, C, H, W)."""
        batch, channels, height, width = image.shape
        pixels = image.detach().flatten(2).transpose(1, 2)  # (B, HW, C)
        cue = text.mean(dim=1).detach()  # (T, C)
        attention = torch.softmax(self.q(pixels) @ self.k(cue).T, dim=-1)  # no 1/sqrt(d), as released
        context = attention @ self.v(cue)  # (B, HW, C/r)
        z = unit_noise((batch, height * width, channels), self.family, self.df, generator, image.device, image.dtype)
        offset = self.sigma(context).abs() * z + self.mu(context)
        return image + offset.transpose(1, 2).reshape(batch, channels, height, width)
