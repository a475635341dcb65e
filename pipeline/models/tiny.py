"""Tiny random-weight models, saved to a folder exactly like downloaded real weights.

Tests and `--models tiny` use them: they go through the same loading code as real checkpoints
(`from_pretrained` folders with their processor and tokenizer files, an official-format SAM `.pth`),
so the whole pipeline runs offline in seconds. Their outputs are meaningless by design.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

# A small WordPiece vocabulary: enough for prompts built from the bundled taxonomies.
_WORDS = sorted(
    set(
        "airplane airport baseball field basketball court bridge chimney expressway service area toll station dam "
        "golf ground track harbor overpass ship stadium storage tank tennis train vehicle windmill soccer ball "
        "roundabout container crane helipad building road water tree grass bareland rangeland developed space "
        "agriculture land intersection car boat house river forest plane a an the of in on with and is are "
        "image satellite aerial view some many there".split()
    )
)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", ".", ",", *_WORDS, *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], *"abcdefghijklmnopqrstuvwxyz"]


def make_tiny_models(folder: Path, seed: int = 0) -> Path:
    """Build, save and describe tiny models; returns the path of the models YAML to pass to `--models`."""
    from pipeline.models import quiet_transformers

    quiet_transformers()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _save_blip(folder / "captioner-blip")
    _save_grounding_dino(folder / "detector-grounding-dino")
    _save_transformers_sam(folder / "segmenter-sam-hf")
    _save_segment_anything(folder / "segmenter-sam.pth")
    config = {
        "captioner": {"model": str(folder / "captioner-blip"), "max_new_tokens": 8},
        "detector": {"model": str(folder / "detector-grounding-dino"), "box_threshold": 0.0, "text_threshold": 0.0, "max_boxes": 5},
        "segmenter": {"backend": "segment-anything", "checkpoint": str(folder / "segmenter-sam.pth"), "arch": TINY_SAM_ARCH},
    }  # fmt: skip
    path = folder / "models.yaml"
    path.write_text("# tiny random-weight models for tests and dry runs: outputs are meaningless\n" + yaml.safe_dump(config, sort_keys=False))
    return path


TINY_SAM_ARCH = {
    "encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
    "image_size": 256, "prompt_embed_dim": 32, "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2,
}  # fmt: skip


def _tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)}, do_lower_case=True)


def _save_blip(folder: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    text = {"vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "encoder_hidden_size": 32, "bos_token_id": VOCAB.index("[DEC]"),
            "pad_token_id": 0, "sep_token_id": VOCAB.index("[SEP]"), "eos_token_id": VOCAB.index("[SEP]")}  # fmt: skip
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 64, "patch_size": 16}  # fmt: skip
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    processor = BlipProcessor(BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    processor.save_pretrained(folder)


def _save_grounding_dino(folder: Path) -> None:
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    backbone = {"model_type": "swin", "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4]}  # fmt: skip
    text = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 1, "intermediate_size": 16}  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        num_queries=10, max_text_len=64, encoder_n_points=2, decoder_n_points=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4,
    )  # fmt: skip
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    GroundingDinoProcessor(image_processor, _tokenizer()).save_pretrained(folder)


def _save_transformers_sam(folder: Path) -> None:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 256,
                       "patch_size": 16, "output_channels": 32, "num_pos_feats": 16, "global_attn_indexes": [1],
                       "window_size": 4, "mlp_dim": 64},
        prompt_encoder_config={"hidden_size": 32, "image_size": 256, "patch_size": 16},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )  # fmt: skip
    SamModel(config).save_pretrained(folder)
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}))
    processor.save_pretrained(folder)


def _save_segment_anything(path: Path) -> None:
    from pipeline.models.segmenter import build_segment_anything

    model = build_segment_anything(TINY_SAM_ARCH)
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(TINY_SAM_ARCH, indent=2))
