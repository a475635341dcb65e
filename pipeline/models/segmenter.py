"""Box-prompted segmenters: one base with the per-tile decode loop, and the SAM backends on it.

Every backend computes ONE image embedding per tile (the expensive part: a ViT or a Hiera over the
whole tile), for all tiles of a batch in one encoder pass, then decodes each tile's boxes in one
prompt batch against that tile's embedding. `BoxPromptSegmenter` holds that loop and the
`image_encoder_calls` count, so a backend only says how it embeds tiles and decodes boxes: the
official `segment-anything` package and transformers' `SamModel` here, `Sam2Model` in
`pipeline.models.sam2` (both transformers ones on `TransformersSegmenter`, what they share).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

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

Tile = TypeVar("Tile")  # what a backend keeps of one tile's encoder pass for its decoder


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


class BoxPromptSegmenter(ABC, Generic[Tile]):
    """The `Segmenter` contract in one place: all tiles through the image encoder in one pass, then
    each tile's boxes decoded in one prompt batch. A tile without boxes gets an empty result and
    no decoder call; `image_encoder_calls` counts embeddings so tests can prove one per tile."""

    def __init__(self, model_id: str, device: str | None) -> None:
        self.model_id = model_id
        self.device = device or pick_device()
        self.image_encoder_calls = 0

    @abstractmethod
    def _embed(self, images: Sequence[np.ndarray]) -> list[Tile]:
        """One image encoder pass over the tiles -> what each tile's decoding needs, in order."""

    @abstractmethod
    def _decode(self, image: np.ndarray, tile: Tile, boxes: np.ndarray) -> SegmentResult:
        """One tile's boxes (N >= 1, xyxy pixels) in one prompt batch -> N masks at the tile's size."""

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[SegmentResult]:
        if len(images) == 0:
            return []
        tiles = self._embed(images)
        self.image_encoder_calls += len(images)
        return [
            self._decode(image, tile, tile_boxes) if len(tile_boxes) else SegmentResult.empty(*image.shape[:2])
            for image, tile, tile_boxes in zip(images, tiles, boxes)
        ]


class _HubSpec(Protocol):  # SamSpec, Sam2Spec: a hub id or a local folder, and its revision
    model: str
    revision: str | None


class TransformersSegmenter(BoxPromptSegmenter[Tile]):
    """transformers' SAM family from a hub id or a local folder (with its processor files): the
    loading, the encoder pass and the mask decoder call are the same for SAM and SAM 2; a subclass
    names its classes and says how a tile's embedding is sliced, its boxes prompted and its masks
    sized back to the tile (where the two processors differ)."""

    def __init__(
        self, model_class: type, processor_class: type, model: str, revision: str | None, device: str | None
    ) -> None:
        quiet_transformers()
        super().__init__(model, device)
        self.processor = processor_class.from_pretrained(model, revision=revision)
        self.model = model_class.from_pretrained(model, revision=revision).to(self.device).eval()

    @classmethod
    def from_spec(cls, spec: _HubSpec) -> Self:
        return cls(spec.model, revision=spec.revision)

    @abstractmethod
    def _per_tile(self, embeddings: Any) -> list[Tile]:
        """The batch's `get_image_embeddings` output -> each tile's share, batch dimension kept."""

    @abstractmethod
    def _prompt(self, image: np.ndarray, boxes: list[list[float]]) -> Mapping[str, torch.Tensor]:
        """One tile's boxes -> the processor's encoding (`input_boxes` and the sizes `_masks` needs)."""

    @abstractmethod
    def _masks(self, pred_masks: torch.Tensor, prompt: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Low-resolution mask logits -> (N, 1, H, W) masks at the tile's size."""

    def _embed(self, images: Sequence[np.ndarray]) -> list[Tile]:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return self._per_tile(self.model.get_image_embeddings(pixels))

    def _decode(self, image: np.ndarray, tile: Tile, boxes: np.ndarray) -> SegmentResult:
        prompt = self._prompt(image, [list(map(float, box)) for box in boxes])
        outputs = self.model(
            image_embeddings=tile, input_boxes=prompt["input_boxes"].to(self.device), multimask_output=False
        )
        masks = self._masks(outputs.pred_masks.cpu(), prompt)
        return SegmentResult(masks[:, 0].numpy().astype(bool), outputs.iou_scores[0, :, 0].float().cpu().numpy())


class TransformersSamSegmenter(TransformersSegmenter[torch.Tensor]):
    """transformers `SamModel` from a hub id or a local folder (with its processor files)."""

    def __init__(self, model: str, revision: str | None = None, device: str | None = None) -> None:
        from transformers import SamModel, SamProcessor

        super().__init__(SamModel, SamProcessor, model, revision, device)

    def _per_tile(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        return list(embeddings.split(1))

    def _prompt(self, image: np.ndarray, boxes: list[list[float]]) -> Mapping[str, torch.Tensor]:
        # SamProcessor reads a tile's sizes only off the tile itself: it is resized again (cheap), not encoded again.
        return self.processor(images=[image], input_boxes=[boxes], return_tensors="pt")

    def _masks(self, pred_masks: torch.Tensor, prompt: Mapping[str, torch.Tensor]) -> torch.Tensor:
        sizes = prompt["original_sizes"], prompt["reshaped_input_sizes"]
        return self.processor.image_processor.post_process_masks(pred_masks, *sizes)[0]


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


SamTile = tuple[
    torch.Tensor, tuple[int, int]
]  # a tile's embedding, and its size once resized (masks are cropped to it)


class SegmentAnythingSegmenter(BoxPromptSegmenter[SamTile]):
    """Official SAM checkpoints (`sam_vit_b_01ec64.pth`, ...): `arch` is a preset name or a dict;
    without it, a `.json` beside the checkpoint or the preset named in the file name is used."""

    def __init__(self, checkpoint: str | Path, arch: str | dict | None = None, device: str | None = None) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: SAM checkpoint not found")
        sizes = _resolve_arch(checkpoint, arch)
        super().__init__(f"segment-anything:{checkpoint.name}", device)
        self.model = build_segment_anything(sizes).to(self.device).eval()
        self.model.load_state_dict(torch.load(checkpoint, map_location=self.device, weights_only=True))
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)

    @classmethod
    def from_spec(cls, spec: SegmentAnythingSpec) -> Self:
        return cls(spec.checkpoint, arch=spec.arch)

    def _embed(self, images: Sequence[np.ndarray]) -> list[SamTile]:
        inputs, input_sizes = [], []
        for image in images:
            resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
            resized = resized.permute(2, 0, 1).contiguous()
            input_sizes.append(tuple(resized.shape[-2:]))
            inputs.append(self.model.preprocess(resized[None]))  # normalized, padded to the encoder's square
        return list(zip(self.model.image_encoder(torch.cat(inputs)).split(1), input_sizes))

    def _decode(self, image: np.ndarray, tile: SamTile, boxes: np.ndarray) -> SegmentResult:
        embedding, input_size = tile
        size = image.shape[:2]
        box_tensor = torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=self.device)
        sparse, dense = self.model.prompt_encoder(
            points=None, boxes=self.transform.apply_boxes_torch(box_tensor, size), masks=None
        )
        low_res, iou = self.model.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        masks = self.model.postprocess_masks(low_res, input_size, size) > self.model.mask_threshold
        return SegmentResult(masks[:, 0].cpu().numpy(), iou[:, 0].float().cpu().numpy())


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
