"""Tiny random-weight twins of every backend, saved to folders exactly like downloaded weights.

Tests and `--models tiny` use them: they go through the same loading code as real checkpoints
(`from_pretrained` folders with their processor and tokenizer files, an official-format SAM `.pth`),
so the whole pipeline, the default captioner's Florence-2 path included, runs offline in seconds.
Their outputs are meaningless by design. Each twin keeps its real model's structure (Florence-2's
DaViT + BART with a byte-level BPE tokenizer and task prompts, SAM 2's Hiera levels) at toy sizes.

Each builder writes one twin into a folder and returns its spec. The registry names each backend's
builder beside its loader; `pipeline.models.tiny` walks the registry to build them all, so this
module stays below both and imports neither (change what a twin writes: bump `tiny.TINY_VERSION`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.models.segmenter import build_segment_anything

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
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    ".",
    ",",
    *_WORDS,
    *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
    *"abcdefghijklmnopqrstuvwxyz",
]
TINY_DETECTOR = {"box_threshold": 0.0, "text_threshold": 0.0, "max_boxes": 5}  # random scores: keep boxes
TINY_SAM_ARCH = {
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "image_size": 256,
    "prompt_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_mlp_dim": 64,
    "decoder_heads": 2,
}


def florence2(folder: Path) -> dict:
    """Florence-2 at toy size: DaViT vision tower, BART encoder-decoder, a byte-level BPE tokenizer
    trained here on the taxonomy words and the task prompts, and Florence-2's own processor."""
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    target = folder / "captioner-florence2"
    tokenizer = _bart_tokenizer()
    # 64 px through DaViT's stride 32 is 2x2 tokens, plus the pooled one Florence-2 prepends.
    image_processor = CLIPImageProcessor(
        size={"height": 64, "width": 64},
        crop_size={"height": 64, "width": 64},
        do_center_crop=False,
        image_seq_length=5,
    )
    vision = {
        "depths": [1, 1, 1, 1],
        "embed_dim": [8, 8, 16, 16],
        "num_heads": [1, 1, 1, 1],
        "num_groups": [1, 1, 1, 1],
        "window_size": 2,
        "projection_dim": 16,
        "max_position_embeddings": 8,
        "max_temporal_embeddings": 4,
    }
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text = {
        "vocab_size": len(tokenizer),
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "max_position_embeddings": 256,
        "decoder_start_token_id": tokenizer.eos_token_id,
        "forced_eos_token_id": tokenizer.eos_token_id,
        **special,
    }
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    Florence2ForConditionalGeneration(config).save_pretrained(target)
    Florence2Processor(image_processor, tokenizer).save_pretrained(target)
    return {"backend": "image-text-to-text", "model": str(target), "max_new_tokens": 8}


def _bart_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartTokenizer

    prompts = [
        "Describe with a paragraph what is shown in the image.",
        "What does the image describe?",
        "Describe in detail what is shown in the image.",
    ]
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        [" ".join(_WORDS), *prompts],
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    model = json.loads(trainer._tokenizer.to_str())["model"]
    return BartTokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        extra_special_tokens={"image_token": "<image>"},
    )


def blip(folder: Path) -> dict:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    target = folder / "captioner-blip"
    tokenizer = _wordpiece_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    text = {
        "vocab_size": len(VOCAB),
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "encoder_hidden_size": 32,
        "bos_token_id": VOCAB.index("[DEC]"),
        "pad_token_id": 0,
        "sep_token_id": VOCAB.index("[SEP]"),
        "eos_token_id": VOCAB.index("[SEP]"),
    }
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "patch_size": 16,
    }
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision)).save_pretrained(target)
    BlipProcessor(BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer).save_pretrained(target)
    return {"backend": "image-text-to-text", "model": str(target), "max_new_tokens": 8}


def _wordpiece_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)}, do_lower_case=True)


def _grounding_dino_sizes() -> dict:
    backbone = {
        "model_type": "swin",
        "embed_dim": 8,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "out_features": ["stage2", "stage3", "stage4"],
        "out_indices": [2, 3, 4],
    }
    text = {
        "model_type": "bert",
        "vocab_size": len(VOCAB),
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "intermediate_size": 16,
    }
    return dict(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=10,
        max_text_len=64,
        encoder_n_points=2,
        decoder_n_points=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=4,
    )


def _save_grounding_processor(target: Path) -> None:
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    GroundingDinoProcessor(image_processor, _wordpiece_tokenizer()).save_pretrained(target)


def grounding_dino(folder: Path) -> dict:
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    target = folder / "detector-grounding-dino"
    GroundingDinoForObjectDetection(GroundingDinoConfig(**_grounding_dino_sizes())).save_pretrained(target)
    _save_grounding_processor(target)
    return {"backend": "grounding-dino", "model": str(target), **TINY_DETECTOR}


def mm_grounding_dino(folder: Path) -> dict:
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    target = folder / "detector-mm-grounding-dino"
    MMGroundingDinoForObjectDetection(MMGroundingDinoConfig(**_grounding_dino_sizes())).save_pretrained(target)
    _save_grounding_processor(target)  # the hub's MM-Grounding-DINO folders use GroundingDINO's processor too
    return {"backend": "mm-grounding-dino", "model": str(target), **TINY_DETECTOR}


def sam_config():
    """The tiny SAM's configuration (a `transformers.SamConfig`): ViT of 2 layers, 32 wide, on 256 px;
    also what `benchmarks/gpu_check_build.py --tiny` times."""
    from transformers import SamConfig

    return SamConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 256,
            "patch_size": 16,
            "output_channels": 32,
            "num_pos_feats": 16,
            "global_attn_indexes": [1],
            "window_size": 4,
            "mlp_dim": 64,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": 256, "patch_size": 16},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )


def sam(folder: Path) -> dict:
    from transformers import SamImageProcessor, SamModel, SamProcessor

    target = folder / "segmenter-sam-hf"
    config = sam_config()
    SamModel(config).save_pretrained(target)
    SamProcessor(SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})).save_pretrained(
        target
    )
    return {"backend": "sam", "model": str(target)}


def sam2(folder: Path) -> dict:
    """SAM 2 at toy size: a four-stage Hiera (one global-attention block, as the real ones have)
    whose three finest levels feed the FPN neck, at 256 px."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    target = folder / "segmenter-sam2"
    hiera = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 8,
        "image_size": [256, 256],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [8, 16, 32, 64],
        "num_attention_heads_per_stage": [1, 1, 1, 1],
        "window_size_per_stage": [4, 4, 4, 4],
        "global_attention_blocks": [3],
        "window_positional_embedding_background_size": [4, 4],
    }
    config = Sam2Config(
        vision_config={
            "backbone_config": hiera,
            "backbone_channel_list": [64, 32, 16, 8],
            "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": 256, "patch_size": 16},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )
    Sam2Model(config).save_pretrained(target)
    Sam2Processor(Sam2ImageProcessor(size={"height": 256, "width": 256})).save_pretrained(target)
    return {"backend": "sam2", "model": str(target)}


def segment_anything(folder: Path) -> dict:
    path = folder / "segmenter-sam.pth"
    torch.save(build_segment_anything(TINY_SAM_ARCH).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(TINY_SAM_ARCH, indent=2))
    return {"backend": "segment-anything", "checkpoint": str(path), "arch": TINY_SAM_ARCH}
