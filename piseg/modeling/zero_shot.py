"""The training-free floor: dense CLIP features against the class prompts, no aggregation and no training,
run through the same sliding-window evaluation as a trained model."""

from __future__ import annotations

import torch
from torch import nn

from piseg.modeling.clip_backbone import ClipBackbone
from piseg.modeling.model import PiSegOutput, cost_volume
from piseg.modeling.prompts import name_prompts


class ZeroShotClip(nn.Module):
    """Same interface as PiSeg for inference: `encode_classes(names)` and `forward(images, text)`."""

    def __init__(self, backbone: ClipBackbone, prompt_template: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_template = prompt_template

    def encode_classes(self, class_names: list[str]) -> torch.Tensor:
        tokens = self.backbone.tokenize(name_prompts(class_names, self.prompt_template))
        device = self.backbone.mean.device
        return self.backbone.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).unsqueeze(
            1
        )

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, generator: torch.Generator | None = None
    ) -> PiSegOutput:
        """Logits = CLIP's logit scale x (cosine - its mean over classes): centring keeps the sigmoid of the
        sliding-window average from saturating (CLIP's cosines all sit near 0.2-0.3)."""
        dense, _ = self.backbone.encode_image(images)
        cost = cost_volume(dense, text)  # (B, P, T, g, g)
        similarity = cost.mean(dim=1)
        scale = self.backbone.clip.logit_scale.exp()
        return PiSegOutput(logits=scale * (similarity - similarity.mean(dim=1, keepdim=True)), cost=cost)
