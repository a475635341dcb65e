"""Inference, one scheme for validation, `piseg predict` and `piseg eval`.

Both start as the released evaluation does: detectron2's test-time resize (shortest edge to `resize`,
longest at most 2560, antialiased like its PIL bilinear resize). Then, as the released code:
Sliding window (docs/piseg.md, "Inference"): the resized image is squashed to `resize`x`resize` for crops
of `crop` at `stride`, and the global view is the shortest-edge image itself squashed to `crop`x`crop`; sigmoid, average
overlapping crops, average the local and global maps, resize bilinearly back to the original size.
Validation during training uses exactly this.
Whole image (the released V1 scripts' "noslide" evaluation): the shortest-edge image padded at the bottom
and right to a multiple of `whole_pad` (32, the released SIZE_DIVISIBILITY; the pad is CLIP's mean colour,
zero after normalisation), squashed straight to the model's input size (`model.backbone.resolution`: 384 for
ViT-B, 336 for ViT-L, as released; never through `crop` first, which would resize a ViT-L view twice); the
prediction of the padded image is stretched back to the original size, padding included, as released.
`whole_pad: 0` drops the padding (prediction aligned with the image; the released scheme shifts it by up to
31/`resize` of the padded side).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from piseg.config import EvalConfig
from piseg.modeling.clip_backbone import CLIP_MEAN
from piseg.modeling.model import PiSeg

TEST_MAX_SIZE = 2560  # MAX_SIZE_TEST of the released configs


def shortest_edge_resize(image: torch.Tensor, shortest: int, max_size: int = TEST_MAX_SIZE) -> torch.Tensor:
    """(1, 3, H, W) -> shortest edge `shortest` (longest capped at `max_size`), sizes rounded as detectron2's
    ResizeShortestEdge does; antialiased, which matches the PIL bilinear resize it applies."""
    height, width = image.shape[-2:]
    scale = shortest / min(height, width)
    new_height, new_width = height * scale, width * scale
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    size = (int(new_height + 0.5), int(new_width + 0.5))
    if size == (height, width):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def crop_offsets(size: int, crop: int, stride: int) -> list[int]:
    """Window starts covering [0, size): every `stride`, plus a last window flush with the end."""
    offsets = list(range(0, max(size - crop, 0) + 1, stride))
    if offsets[-1] + crop < size:
        offsets.append(size - crop)
    return offsets


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """(1, 3, H, W) padded at the bottom and right to multiples of `multiple` with CLIP's mean colour (what
    detectron2's ImageList does to the normalised image with pad value 0)."""
    height, width = image.shape[-2:]
    padded = image.new_empty(1, 3, -(-height // multiple) * multiple, -(-width // multiple) * multiple)
    padded[:] = torch.tensor(CLIP_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    padded[..., :height, :width] = image
    return padded


@torch.no_grad()
def sliding_window_probabilities(
    model: PiSeg, image: torch.Tensor, text: torch.Tensor, settings: EvalConfig
) -> torch.Tensor:
    """image (3, H, W) on 0-255 -> class probabilities (T, H, W) at the image's own size."""
    height, width = image.shape[-2:]
    shortest = shortest_edge_resize(image[None].float(), settings.resize)
    resized = F.interpolate(shortest, size=(settings.resize, settings.resize), mode="bilinear", align_corners=False)
    offsets = crop_offsets(settings.resize, settings.crop, settings.stride)
    windows = [(top, left) for top in offsets for left in offsets]
    crops = [resized[..., top : top + settings.crop, left : left + settings.crop] for top, left in windows]
    crops.append(F.interpolate(shortest, size=(settings.crop, settings.crop), mode="bilinear", align_corners=False))
    logits = model(torch.cat(crops), text).logits
    probabilities = F.interpolate(
        logits, size=(settings.crop, settings.crop), mode="bilinear", align_corners=False
    ).sigmoid()
    classes = probabilities.shape[1]
    local = probabilities.new_zeros(classes, settings.resize, settings.resize)
    count = probabilities.new_zeros(1, settings.resize, settings.resize)
    for (top, left), crop_probabilities in zip(windows, probabilities[:-1]):
        local[:, top : top + settings.crop, left : left + settings.crop] += crop_probabilities
        count[:, top : top + settings.crop, left : left + settings.crop] += 1
    overall = F.interpolate(
        probabilities[-1:], size=(settings.resize, settings.resize), mode="bilinear", align_corners=False
    )[0]
    combined = (local / count + overall) / 2
    return F.interpolate(combined[None], size=(height, width), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def whole_image_probabilities(
    model: PiSeg, image: torch.Tensor, text: torch.Tensor, settings: EvalConfig
) -> torch.Tensor:
    """image (3, H, W) on 0-255 -> class probabilities (T, H, W) from one view of the whole image."""
    height, width = image.shape[-2:]
    view = shortest_edge_resize(image[None].float(), settings.resize)
    if settings.whole_pad:
        view = pad_to_multiple(view, settings.whole_pad)
    size = model.backbone.resolution  # one resize to what CLIP sees, as released (ViT-L: 336, not 384 then 336)
    view = F.interpolate(view, size=(size, size), mode="bilinear", align_corners=False)
    probabilities = model(view, text).logits.sigmoid()
    return F.interpolate(probabilities, size=(height, width), mode="bilinear", align_corners=False)[0]


def class_probabilities(model: PiSeg, image: torch.Tensor, text: torch.Tensor, settings: EvalConfig) -> torch.Tensor:
    """image (3, H, W) on 0-255 -> class probabilities (T, H, W) by the settings' inference mode."""
    if settings.mode == "whole":
        return whole_image_probabilities(model, image, text, settings)
    return sliding_window_probabilities(model, image, text, settings)


def predict_mask(model: PiSeg, image: torch.Tensor, text: torch.Tensor, settings: EvalConfig) -> torch.Tensor:
    """image (3, H, W) on 0-255 -> class ids (H, W), int64."""
    return class_probabilities(model, image, text, settings).argmax(dim=0)
