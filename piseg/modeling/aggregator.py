"""CAT-Seg cost aggregation: embed the image-text cost volume, aggregate it spatially (Swin windows
guided by CLIP's appearance features) and across classes (linear attention guided by the text), then
upsample it to logits with guidance from intermediate CLIP blocks. Shapes follow docs/piseg.md
("Architecture and shapes")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window; queries and keys also see the appearance guidance."""

    def __init__(self, dim: int, guidance_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guided: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (N, L, dim), guided = [x, guidance] (N, L, dim+g), mask (windows, L, L) of 0 / -inf or None."""
        n, length, dim = x.shape
        split = lambda t: t.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(guided)), split(self.k(guided)), split(self.v(x))
        attention = (q * self.scale) @ k.transpose(-2, -1)
        if mask is not None:
            windows = mask.shape[0]
            attention = attention.view(n // windows, windows, self.heads, length, length) + mask[None, :, None]
            attention = attention.view(n, self.heads, length, length)
        out = attention.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class SwinBlock(nn.Module):
    """One (shifted) window attention block with an MLP; no relative position bias (docs/piseg.md)."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, window: int, shift: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None, side: int) -> torch.Tensor:
        """x (N, side*side, dim); guidance (N, side*side, g) or None."""
        n, _, dim = x.shape
        shortcut = x
        x = self.norm1(x)
        both = x if guidance is None else torch.cat([x, guidance], dim=-1)
        both = both.view(n, side, side, -1)
        if self.shift:
            both = torch.roll(both, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self._partition(both)
        mask = self._mask(side, x.device, x.dtype) if self.shift else None
        out = self.attn(windows[..., :dim], windows, mask)
        out = self._merge(out, n, side)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + out.reshape(n, side * side, dim)
        return x + self.mlp(self.norm2(x))

    def _partition(self, x: torch.Tensor) -> torch.Tensor:
        n, side, _, channels = x.shape
        per = side // self.window
        x = x.view(n, per, self.window, per, self.window, channels).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n * per * per, self.window * self.window, channels)

    def _merge(self, windows: torch.Tensor, n: int, side: int) -> torch.Tensor:
        per = side // self.window
        x = windows.view(n, per, per, self.window, self.window, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, side, side, -1)

    def _mask(self, side: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Shifted windows mix regions that are not adjacent in the image; mask those pairs out."""
        regions = torch.zeros(1, side, side, 1, device=device)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        label = 0
        for rows in cuts:
            for cols in cuts:
                regions[:, rows, cols, :] = label
                label += 1
        ids = self._partition(regions).squeeze(-1)
        different = ids[:, None, :] != ids[:, :, None]
        return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, float("-inf"))


class SpatialAggregation(nn.Module):
    """Two Swin blocks (shift 0, then window/2) over each class's cost map, guided by CLIP features."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance_dim, heads, window, shift=0)
        self.block_2 = SwinBlock(dim, guidance_dim, heads, window, shift=window // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x (B, dim, T, H, W); guidance (B, g, H, W)."""
        batch, dim, classes, side, _ = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(batch * classes, side * side, dim)
        guide = guidance.flatten(2).transpose(1, 2)  # (B, HW, g)
        guide = self.guidance_norm(guide).repeat_interleave(classes, dim=0)
        x = self.block_2(self.block_1(x, guide, side), guide, side)
        return x.view(batch, classes, side, side, dim).permute(0, 4, 1, 2, 3)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention with the elu+1 feature map; (N, L, heads, d) in and out."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / length)
    normaliser = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, normaliser) * length


class ClassAggregation(nn.Module):
    """Attention across classes at every (pooled) position; queries and keys also see the text guidance.
    Classes are padded with learned tokens up to `pad_len` so the attention sees a fixed-size set."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, pad_len: int) -> None:
        super().__init__()
        self.heads, self.pad_len = heads, pad_len
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.ReLU(), nn.Linear(dim * 4, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim))

    def forward(self, x: torch.Tensor, text_guidance: torch.Tensor, pool: int) -> torch.Tensor:
        """x (B, dim, T, H, W); text_guidance (T, g); pool = average-pooling size of the positions."""
        batch, dim, classes, side, _ = x.shape
        pooled = x.permute(0, 2, 1, 3, 4).reshape(batch * classes, dim, side, side)
        if pool > 1:
            pooled = F.avg_pool2d(pooled, pool)
        small = pooled.shape[-1]
        tokens = pooled.view(batch, classes, dim, small * small).permute(0, 3, 1, 2).reshape(-1, classes, dim)
        guide = text_guidance.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        if classes < self.pad_len:
            extra = self.pad_len - classes
            tokens = torch.cat([tokens, self.padding_tokens.expand(tokens.shape[0], extra, -1)], dim=1)
            guide = torch.cat([guide, self.padding_guidance.expand(tokens.shape[0], extra, -1)], dim=1)
        tokens = tokens + self._attend(self.norm1(tokens), guide)
        tokens = tokens + self.mlp(self.norm2(tokens))
        tokens = tokens[:, :classes]
        out = (
            tokens.view(batch, small, small, classes, dim)
            .permute(0, 3, 4, 1, 2)
            .reshape(batch * classes, dim, small, small)
        )
        if pool > 1:
            out = F.interpolate(out, size=(side, side), mode="bilinear", align_corners=True)  # as released
        return x + out.view(batch, classes, dim, side, side).transpose(1, 2)

    def _attend(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        guided = torch.cat([x, guidance], dim=-1)
        split = lambda t: t.view(n, length, self.heads, dim // self.heads)  # noqa: E731
        out = linear_attention(split(self.q(guided)), split(self.k(guided)), split(self.v(x)))
        return out.reshape(n, length, dim)


class AggregationLayer(nn.Module):
    def __init__(self, dim: int, appearance_dim: int, text_dim: int, heads: int, window: int, pad_len: int) -> None:
        super().__init__()
        self.spatial = SpatialAggregation(dim, appearance_dim, heads, window)
        self.classes = ClassAggregation(dim, text_dim, heads, pad_len)

    def forward(self, x: torch.Tensor, appearance: torch.Tensor, text: torch.Tensor, pool: int) -> torch.Tensor:
        return self.classes(self.spatial(x, appearance), text, pool)


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = max(out_channels // 16, 1)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Up(nn.Module):
    """x2 transposed convolution, then the (per-image) guidance concatenated, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        guidance = guidance.repeat_interleave(x.shape[0] // guidance.shape[0], dim=0)
        return self.conv(torch.cat([x, guidance], dim=1))


class Aggregator(nn.Module):
    """Cost volume (B, P, T, g, g) + guidance -> logits (B, T, 4g, 4g)."""

    def __init__(
        self,
        embed_dim: int,
        prompts: int,
        hidden: int,
        layers: int,
        heads: int,
        window: int,
        pad_len: int,
        decoder_dims: tuple[int, int],
        decoder_guidance_dims: tuple[int, int],
        decoder_guidance_proj_dims: tuple[int, int],
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(prompts, hidden, kernel_size=7, padding=3)
        self.appearance_projection = nn.Sequential(nn.Conv2d(embed_dim, hidden, 3, padding=1), nn.ReLU())
        self.text_projection = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU())
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, p, 3, padding=1), nn.ReLU())
            for d, p in zip(decoder_guidance_dims, decoder_guidance_proj_dims)
        )
        self.layers = nn.ModuleList(
            AggregationLayer(hidden, hidden, hidden, heads, window, pad_len) for _ in range(layers)
        )
        self.decoder1 = Up(hidden, decoder_dims[0], decoder_guidance_proj_dims[0])
        self.decoder2 = Up(decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, 3, padding=1)
        self.pad_len = pad_len

    def forward(
        self,
        cost: torch.Tensor,
        appearance: torch.Tensor,
        text: torch.Tensor,
        decoder_guidance: list[torch.Tensor],
        pool: int,
    ) -> torch.Tensor:
        """cost (B, P, T, g, g); appearance (B, C, g, g) un-perturbed CLIP features; text (T, P, C);
        decoder_guidance [(B, d0, 2g, 2g), (B, d1, 4g, 4g)]; pool = class-attention pooling size."""
        batch, prompts, classes, side, _ = cost.shape
        embedded = self.embed(cost.permute(0, 2, 1, 3, 4).reshape(batch * classes, prompts, side, side))
        x = embedded.view(batch, classes, -1, side, side).transpose(1, 2)
        appearance_guidance = self.appearance_projection(appearance)
        text_guidance = self.text_projection(F.normalize(text.mean(dim=1), dim=-1))
        for layer in self.layers:
            x = layer(x, appearance_guidance, text_guidance, pool)
        guides = [project(g) for project, g in zip(self.decoder_guidance_projection, decoder_guidance)]
        x = x.transpose(1, 2).reshape(batch * classes, -1, side, side)
        x = self.decoder2(self.decoder1(x, guides[0]), guides[1])
        return self.head(x).view(batch, classes, 4 * side, 4 * side)
