"""Pi-Seg: CLIP + CAT-Seg cost aggregation + semantic-aware perturbation (SPM) in training.

images ─ CLIP vision ─ dense V (B,C,g,g) ──[Image-SPM]── cost volume cos(V, T) (B,P,T,g,g) ─ Aggregator ─ logits
class prompts ─ CLIP text ─ T (T,P,C) ──────[Text-SPM]──┘          guidance: V, blocks, T ──┘
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from piseg.config import ModelConfig
from piseg.modeling.aggregator import Aggregator
from piseg.modeling.clip_backbone import ClipBackbone, load_clip
from piseg.modeling.prompts import name_prompts
from piseg.modeling.spm import ImageSPM, TextSPM


@dataclass
class PiSegOutput:
    logits: torch.Tensor  # (B, T, 4g, 4g)
    cost: torch.Tensor  # the cost volume the aggregator saw (B, P, T, g, g)
    # Figure 10's "before", in training with an SPM on: the cost volume of the unperturbed image features with
    # the *perturbed* text, as the released code computes it, so the change isolates the image perturbation
    clean_cost: torch.Tensor | None = None


class PiSeg(nn.Module):
    def __init__(self, config: ModelConfig, backbone: ClipBackbone) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        channels, width = backbone.embed_dim, backbone.vision_width
        spm = config.spm
        self.text_spm = TextSPM(channels, spm.sigma_t, spm.text_noise, spm.student_t_df) if spm.text else None
        self.image_spm = ImageSPM(channels, spm.reduction, spm.image_noise, spm.student_t_df) if spm.image else None
        d0, d1 = config.decoder_guidance_dims
        self.guidance_up1 = nn.ConvTranspose2d(width, d0, kernel_size=2, stride=2)
        self.guidance_up2 = nn.ConvTranspose2d(width, d1, kernel_size=4, stride=4)
        self.aggregator = Aggregator(
            channels,
            prompts=1,
            hidden=config.hidden_dim,
            layers=config.num_layers,
            heads=config.heads,
            window=config.window_size,
            pad_len=config.pad_len,
            decoder_dims=config.decoder_dims,
            decoder_guidance_dims=config.decoder_guidance_dims,
            decoder_guidance_proj_dims=config.decoder_guidance_proj_dims,
        )

    @property
    def perturbs(self) -> bool:
        """SPMs act only in training mode; evaluation is always the plain cost volume."""
        return self.training and (self.text_spm is not None or self.image_spm is not None)

    def prompts(self, class_names: list[str]) -> list[str]:
        return name_prompts(class_names, self.config.prompt_template)

    def encode_classes(self, class_names: list[str]) -> torch.Tensor:
        """(T, P=1, C) text embeddings through the (partly trained) text encoder."""
        tokens = self.backbone.tokenize(self.prompts(class_names))
        device = self.guidance_up1.weight.device
        text = self.backbone.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        return text.unsqueeze(1)

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, generator: torch.Generator | None = None
    ) -> PiSegOutput:
        """images (B, 3, S, S) on 0-255; text (T, P, C) from `encode_classes`."""
        dense, blocks = self.backbone.encode_image(images)
        guidance = [self.guidance_up1(blocks[0]), self.guidance_up2(blocks[1])]
        vision, words = dense, text
        clean_cost = None
        if self.perturbs:
            if self.text_spm is not None:
                words = self.text_spm(text, generator)
            if self.image_spm is not None:
                vision = self.image_spm(dense, words, generator)
            with torch.no_grad():
                clean_cost = cost_volume(dense, words)
        cost = cost_volume(vision, words)
        pool = self.config.class_pool_train if self.training else 1
        logits = self.aggregator(cost, dense, words, guidance, pool)
        return PiSegOutput(logits=logits, cost=cost, clean_cost=clean_cost)


def cost_volume(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity: image (B, C, H, W), text (T, P, C) -> (B, P, T, H, W)."""
    return torch.einsum("bchw,tpc->bpthw", F.normalize(image, dim=1), F.normalize(text, dim=-1))


def build_model(config: ModelConfig) -> PiSeg:
    """A Pi-Seg model with CLIP from `config.clip` (pretrained) or random weights (clip = None)."""
    return PiSeg(config, load_clip(config))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
