"""Box-prompted segmenters: the official `segment-anything` package and transformers' `SamModel`.

Both compute ONE image embedding per tile (the expensive part: a ViT over 1024x1024) and decode
all of that tile's boxes in one prompt batch. The image encoder runs once per batch of tiles.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.models import quiet_transformers
from pipeline.models.device import pick_device
from pipeline.models.protocols import Segmenter, SegmentResult  # noqa: F401  (re-exported)
from pipeline.models.spec import BackendSpec

SAM_PRESETS = {
    "vit_b": {
        "encoder_embed_dim": 768,
        "encoder_depth": 12,
        "encoder_num_heads": 12,
        "encoder_global_attn_indexes": [2, 5, 8, 11],
    },
    "vit_l": {
        "encoder_embed_dim": 1024,
        "encoder_depth": 24,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [5, 11, 17, 23],
    },
    "vit_h": {
        "encoder_embed_dim": 1280,
        "encoder_depth": 32,
        "encoder_num_heads": 16,
        "encoder_global_attn_indexes": [7, 15, 23, 31],
    },
}
SAM_DEFAULTS = {
    "image_size": 1024,
    "prompt_embed_dim": 256,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_heads": 8,
}


class SamSpec(BackendSpec):
    """transformers `SamModel` (facebook/sam-vit-base, -large, -huge or a local folder)."""

    backend: Literal["sam"] = "sam"
    model: str = "facebook/sam-vit-base"
    revision: str | None = None


class SegmentAnythingSpec(BackendSpec):
    """An official `segment-anything` checkpoint (`sam_vit_b_01ec64.pth`, ...): a local file."""

    backend: Literal["segment-anything"] = "segment-anything"
    checkpoint: str
    arch: str | dict | None = None  # vit_b | vit_l | vit_h | a dict of sizes; else from the file


def build_segment_anything(arch: dict):
    """The official architecture from a preset name's numbers or a custom dict (tests' tiny models)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = {**SAM_DEFAULTS, **arch}
    patch = 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a["encoder_depth"],
            embed_dim=a["encoder_embed_dim"],
            img_size=a["image_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a["encoder_num_heads"],
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a["encoder_global_attn_indexes"],
            window_size=14,
            out_chans=a["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(a["image_size"] // patch,) * 2,
            input_image_size=(a["image_size"],) * 2,
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a["decoder_depth"],
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


class SegmentAnythingSegmenter:
    """Official SAM checkpoints (`sam_vit_b_01ec64.pth`, ...): `arch` is a preset name or a dict;
    without it, a `.json` beside the checkpoint or the preset named in the file name is used."""

    def __init__(self, checkpoint: str | Path, arch: str | dict | None = None, device: str | None = None) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: SAM checkpoint not found")
        spec = _resolve_arch(checkpoint, arch)
        self.device = device or pick_device()
        self.model = build_segment_anything(spec).to(self.device).eval()
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state)
        self.model_id = f"segment-anything:{checkpoint.name}"
        self.image_encoder_calls = 0
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)

    @classmethod
    def from_spec(cls, spec: SegmentAnythingSpec) -> SegmentAnythingSegmenter:
        return cls(spec.checkpoint, arch=spec.arch)

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[SegmentResult]:
        inputs, input_sizes = [], []
        for image in images:
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
            input_sizes.append(tuple(tensor.shape[-2:]))
            inputs.append(self.model.preprocess(tensor[None]))
        embeddings = self.model.image_encoder(torch.cat(inputs)) if inputs else None
        self.image_encoder_calls += len(inputs)
        results = []
        for index, (image, tile_boxes) in enumerate(zip(images, boxes)):
            height, width = image.shape[:2]
            if len(tile_boxes) == 0:
                results.append(SegmentResult.empty(height, width))
                continue
            box_tensor = self.transform.apply_boxes_torch(
                torch.as_tensor(np.asarray(tile_boxes), dtype=torch.float32, device=self.device), (height, width)
            )
            sparse, dense = self.model.prompt_encoder(points=None, boxes=box_tensor, masks=None)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=embeddings[index : index + 1],
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks = (
                self.model.postprocess_masks(low_res, input_sizes[index], (height, width)) > self.model.mask_threshold
            )
            results.append(SegmentResult(masks[:, 0].cpu().numpy(), iou[:, 0].float().cpu().numpy()))
        return results


class TransformersSamSegmenter:
    """transformers `SamModel` from a hub id or a local folder (with its processor files)."""

    def __init__(self, model: str, revision: str | None = None, device: str | None = None) -> None:
        from transformers import SamModel, SamProcessor

        quiet_transformers()
        self.device = device or pick_device()
        self.processor = SamProcessor.from_pretrained(model, revision=revision)
        self.model = SamModel.from_pretrained(model, revision=revision).to(self.device).eval()
        self.model_id = model
        self.image_encoder_calls = 0

    @classmethod
    def from_spec(cls, spec: SamSpec) -> TransformersSamSegmenter:
        return cls(spec.model, revision=spec.revision)

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[SegmentResult]:
        if not images:
            return []
        encoded = self.processor(images=list(images), return_tensors="pt").to(self.device)
        embeddings = self.model.get_image_embeddings(encoded["pixel_values"])
        self.image_encoder_calls += len(images)
        results = []
        for index, (image, tile_boxes) in enumerate(zip(images, boxes)):
            height, width = image.shape[:2]
            if len(tile_boxes) == 0:
                results.append(SegmentResult.empty(height, width))
                continue
            prompt = self.processor(
                images=[image], input_boxes=[[list(map(float, b)) for b in tile_boxes]], return_tensors="pt"
            )
            outputs = self.model(
                image_embeddings=embeddings[index : index + 1],
                input_boxes=prompt["input_boxes"].to(self.device),
                multimask_output=False,
            )
            masks = self.processor.image_processor.post_process_masks(
                outputs.pred_masks.cpu(), prompt["original_sizes"], prompt["reshaped_input_sizes"]
            )[0]
            results.append(
                SegmentResult(masks[:, 0].numpy().astype(bool), outputs.iou_scores[0, :, 0].float().cpu().numpy())
            )
        return results


def _resolve_arch(checkpoint: Path, arch: str | dict | None) -> dict:
    if isinstance(arch, dict):
        return arch
    if isinstance(arch, str):
        if arch not in SAM_PRESETS:
            raise ValueError(f"unknown SAM architecture {arch!r}; presets: {', '.join(SAM_PRESETS)}")
        return SAM_PRESETS[arch]
    sidecar = checkpoint.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    for name, preset in SAM_PRESETS.items():
        if name in checkpoint.name:
            return preset
    raise ValueError(f"{checkpoint}: cannot tell the SAM architecture; pass arch: vit_b, vit_l or vit_h")
