"""Converting the authors' released checkpoints (detectron2 `model_final.pth` of Pi-Seg or CAT-Seg) into
Pi-Seg checkpoints, so the published weights evaluate here without detectron2.

The released model keeps OpenAI's CLIP layout with the attention's query/key/value weights split apart
(`attn.q_proj_weight`, ...) but one packed `attn.in_proj_bias`; its head lives under
`sem_seg_head.predictor` and the two guidance upsamplers at the top level. Every released tensor is
mapped by a rule below and every tensor of the model must be filled, so a checkpoint of another layout
fails with the names that did not fit instead of loading half its weights.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPModel, CLIPTokenizer

from ovrsis.errors import ReleasedCheckpointError
from piseg.checkpoint import error_summary, save_checkpoint
from piseg.config import ClipArchitecture, PiSegConfig, preset, validate
from piseg.modeling.clip_backbone import ClipBackbone, byte_level_tokenizer, clip_config
from piseg.modeling.model import PiSeg

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
HEAD_PREFIX = "sem_seg_head.predictor."
OPENAI_HEAD_WIDTH = 64  # OpenAI's CLIP builds width // 64 attention heads; the weights do not record it
# Tensors a released checkpoint may hold that are not weights: recomputed here.
NOT_WEIGHTS = re.compile(r"^(pixel_mean|pixel_std|clip_pixel_mean|clip_pixel_std)$|\.attn_mask$")


Transform = Callable[[torch.Tensor], torch.Tensor]


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _transposed(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.T.contiguous()


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1)


# (released name pattern, Pi-Seg name template, transform), tried in order. CLIP names are relative to
# the released `clip_model`, head names to `sem_seg_head.predictor`, top-level names are whole.
_BLOCK = r"(?P<tower>visual\.)?transformer\.resblocks\.(?P<i>\d+)\."
_CLIP_RULES: list[tuple[str, str, Transform]] = [
    (r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight", _same),
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding", _same),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight", _same),
    (r"visual\.ln_pre\.(?P<p>weight|bias)", "vision_model.pre_layrnorm.{p}", _same),
    (r"visual\.ln_post\.(?P<p>weight|bias)", "vision_model.post_layernorm.{p}", _same),
    (r"visual\.proj", "visual_projection.weight", _transposed),
    (r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight", _same),
    (r"positional_embedding", "text_model.embeddings.position_embedding.weight", _same),
    (r"ln_final\.(?P<p>weight|bias)", "text_model.final_layer_norm.{p}", _same),
    (r"text_projection", "text_projection.weight", _transposed),
    (r"logit_scale", "logit_scale", _same),
    (_BLOCK + r"attn\.(?P<x>[qkv])_proj_weight", "{tower}.encoder.layers.{i}.self_attn.{x}_proj.weight", _same),
    (_BLOCK + r"attn\.in_proj_weight", "{tower}.encoder.layers.{i}.self_attn.<qkv>_proj.weight", _same),
    (_BLOCK + r"attn\.in_proj_bias", "{tower}.encoder.layers.{i}.self_attn.<qkv>_proj.bias", _same),
    (_BLOCK + r"attn\.out_proj\.(?P<p>weight|bias)", "{tower}.encoder.layers.{i}.self_attn.out_proj.{p}", _same),
    (_BLOCK + r"ln_(?P<n>[12])\.(?P<p>weight|bias)", "{tower}.encoder.layers.{i}.layer_norm{n}.{p}", _same),
    (_BLOCK + r"mlp\.c_fc\.(?P<p>weight|bias)", "{tower}.encoder.layers.{i}.mlp.fc1.{p}", _same),
    (_BLOCK + r"mlp\.c_proj\.(?P<p>weight|bias)", "{tower}.encoder.layers.{i}.mlp.fc2.{p}", _same),
]
_LAYER = r"transformer\.layers\.(?P<i>\d+)\."
_TOP_RULES: list[tuple[str, str, Transform]] = [
    (r"upsample(?P<n>[12])\.(?P<p>weight|bias)", "guidance_up{n}.{p}", _same),
]
_HEAD_RULES: list[tuple[str, str, Transform]] = [
    (r"transformer\.conv1\.(?P<p>weight|bias)", "aggregator.embed.{p}", _same),
    (r"transformer\.guidance_projection\.0\.(?P<p>weight|bias)", "aggregator.appearance_projection.0.{p}", _same),
    (r"transformer\.text_guidance_projection\.0\.(?P<p>weight|bias)", "aggregator.text_projection.0.{p}", _same),
    (
        r"transformer\.decoder_guidance_projection\.(?P<j>\d)\.0\.(?P<p>weight|bias)",
        "aggregator.decoder_guidance_projection.{j}.0.{p}",
        _same,
    ),
    (
        _LAYER
        + r"sptial_agg\.(?P<b>block_[12])\.(?P<m>norm1|norm2|attn\.q|attn\.k|attn\.v|attn\.proj)\.(?P<p>weight|bias)",
        "aggregator.layers.{i}.spatial.{b}.{m}.{p}",
        _same,
    ),
    # timm's Mlp(fc1, GELU, fc2) is Sequential(Linear, GELU, Linear) here
    (
        _LAYER + r"sptial_agg\.(?P<b>block_[12])\.mlp\.fc1\.(?P<p>weight|bias)",
        "aggregator.layers.{i}.spatial.{b}.mlp.0.{p}",
        _same,
    ),
    (
        _LAYER + r"sptial_agg\.(?P<b>block_[12])\.mlp\.fc2\.(?P<p>weight|bias)",
        "aggregator.layers.{i}.spatial.{b}.mlp.2.{p}",
        _same,
    ),
    (
        _LAYER + r"sptial_agg\.guidance_norm\.(?P<p>weight|bias)",
        "aggregator.layers.{i}.spatial.guidance_norm.{p}",
        _same,
    ),
    (
        _LAYER + r"class_agg\.attention\.(?P<x>[qkv])\.(?P<p>weight|bias)",
        "aggregator.layers.{i}.classes.{x}.{p}",
        _same,
    ),
    (_LAYER + r"class_agg\.MLP\.(?P<j>[02])\.(?P<p>weight|bias)", "aggregator.layers.{i}.classes.mlp.{j}.{p}", _same),
    (_LAYER + r"class_agg\.(?P<m>norm1|norm2)\.(?P<p>weight|bias)", "aggregator.layers.{i}.classes.{m}.{p}", _same),
    (_LAYER + r"class_agg\.(?P<m>padding_tokens|padding_guidance)", "aggregator.layers.{i}.classes.{m}", _same),
    (r"transformer\.(?P<d>decoder[12])\.up\.(?P<p>weight|bias)", "aggregator.{d}.up.{p}", _same),
    (
        r"transformer\.(?P<d>decoder[12])\.conv\.double_conv\.(?P<j>\d)\.(?P<p>weight|bias)",
        "aggregator.{d}.conv.layers.{j}.{p}",
        _same,
    ),
    (r"transformer\.head\.(?P<p>weight|bias)", "aggregator.head.{p}", _same),
    (r"text_vpn\.mu", "text_spm.mu", _flat),
    (r"text_vpn\.var", "text_spm.sigma", _flat),
    (r"image_vpn\.cross_attn\.fc_(?P<x>[qkv])\.(?P<p>weight|bias)", "image_spm.{x}.{p}", _same),
    (r"image_vpn\.fc_mean\.(?P<p>weight|bias)", "image_spm.mu.{p}", _same),
    (r"image_vpn\.fc_variance\.(?P<p>weight|bias)", "image_spm.sigma.{p}", _same),
]
_TOWERS = {"visual.": "vision_model", None: "text_model"}


def read_released(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of a released checkpoint: detectron2's {"model": state_dict, ...} or a bare state_dict.
    Loaded with `weights_only=True` (a checkpoint cannot run code) unless the user trusts the file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError as error:
        raise ReleasedCheckpointError(f"{path}: no such file") from error
    except Exception as error:  # pickle and zip errors have many types
        hint = "" if trust_pickle else "; if it holds more than tensors and you trust its source, pass --trust-pickle"
        raise ReleasedCheckpointError(
            f"{path}: not a readable PyTorch checkpoint of tensors ({type(error).__name__}: "
            f"{error_summary(error)}){hint}"
        ) from error
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not any(key.startswith(CLIP_PREFIX) for key in state):
        raise ReleasedCheckpointError(
            f"{path}: no released Pi-Seg/CAT-Seg weights in it (expected keys under "
            f"{CLIP_PREFIX!r}, in a dict or under 'model')"
        )
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def infer_architecture(state: dict[str, torch.Tensor]) -> ClipArchitecture:
    """The CLIP shapes from the weights, as OpenAI's `build_model` does (heads = width // 64)."""

    def shape(name: str) -> torch.Size:
        key = CLIP_PREFIX + name
        if key not in state:
            raise ReleasedCheckpointError(f"the released weights lack {key!r}; is this a ViT CLIP checkpoint?")
        return state[key].shape

    def layers(tower: str) -> int:
        pattern = re.compile(re.escape(CLIP_PREFIX + tower) + r"transformer\.resblocks\.(\d+)\.")
        return 1 + max(int(m.group(1)) for key in state if (m := pattern.match(key)))

    vision_width, _, patch, _ = shape("visual.conv1.weight")
    text_width = shape("ln_final.weight")[0]
    grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
    return ClipArchitecture(
        text_hidden=text_width,
        text_layers=layers(""),
        text_heads=max(1, text_width // OPENAI_HEAD_WIDTH),
        text_intermediate=shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
        vision_hidden=vision_width,
        vision_layers=layers("visual."),
        vision_heads=max(1, vision_width // OPENAI_HEAD_WIDTH),
        vision_intermediate=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
        patch_size=patch,
        pretrained_image_size=grid * patch,
        projection_dim=shape("visual.proj")[1],
        vocab_size=shape("token_embedding.weight")[0],
        max_text_length=shape("positional_embedding")[0],
    )


def known_backbone(architecture: ClipArchitecture) -> str | None:
    return next((name for name in ("vit-b", "vit-l") if preset(name).model.architecture == architecture), None)


def backbone_for(architecture: ClipArchitecture) -> str:
    if (name := known_backbone(architecture)) is not None:
        return name
    raise ReleasedCheckpointError(
        f"the released CLIP (vision width {architecture.vision_hidden}, patch "
        f"{architecture.patch_size}) is neither ViT-B/16 nor ViT-L/14@336; pass a "
        "configuration made for it"
    )


def model_config_for(
    state: dict[str, torch.Tensor], architecture: ClipArchitecture, base: PiSegConfig, tokenizer_source: str | None
) -> PiSegConfig:
    """`base` with what the weights determine: CLIP shapes, aggregation depth, which SPMs exist and r."""
    layer_pattern = re.compile(re.escape(HEAD_PREFIX) + r"transformer\.layers\.(\d+)\.")
    num_layers = 1 + max((int(m.group(1)) for key in state if (m := layer_pattern.match(key))), default=-1)
    image_spm = HEAD_PREFIX + "image_vpn.cross_attn.fc_q.weight"
    spm = dataclasses.replace(
        base.model.spm,
        text=HEAD_PREFIX + "text_vpn.mu" in state,
        image=image_spm in state,
        reduction=architecture.projection_dim // state[image_spm].shape[0]
        if image_spm in state
        else base.model.spm.reduction,
    )
    model = dataclasses.replace(
        base.model, architecture=architecture, num_layers=num_layers, spm=spm, clip=tokenizer_source
    )
    config = dataclasses.replace(base, model=model)
    validate(config)
    return config


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released names -> this model's names. Raises with every name no rule knows."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if NOT_WEIGHTS.search(key):
            continue
        if key.startswith(CLIP_PREFIX):
            mapped = _apply_rules(key[len(CLIP_PREFIX) :], tensor, _CLIP_RULES, "backbone.clip.")
        elif key.startswith(HEAD_PREFIX):
            mapped = _apply_rules(key[len(HEAD_PREFIX) :], tensor, _HEAD_RULES, "")
        else:
            mapped = _apply_rules(key, tensor, _TOP_RULES, "")
        if mapped is None:
            unknown.append(key)
        else:
            converted.update(mapped)
    if unknown:
        raise ReleasedCheckpointError(
            f"{len(unknown)} released tensors have no place in Pi-Seg: " + ", ".join(unknown[:12])
        )
    return converted


def _apply_rules(
    name: str, tensor: torch.Tensor, rules: list[tuple[str, str, Transform]], prefix: str
) -> dict[str, torch.Tensor] | None:
    for pattern, template, transform in rules:
        match = re.fullmatch(pattern, name)
        if match is None:
            continue
        groups = match.groupdict()
        if "tower" in groups:
            groups["tower"] = _TOWERS[groups["tower"]]
        target = prefix + template.format(**groups)
        if "<qkv>" in target:  # a packed q/k/v tensor: split into the three projections
            return {
                target.replace("<qkv>", part): chunk.clone()
                for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True)
            }
        return {target: transform(tensor)}
    return None


def build_converted_model(config: PiSegConfig, tokenizer: CLIPTokenizer) -> PiSeg:
    """An empty Pi-Seg of the released shape; the text pooling reads the tokenizer's end-of-text token."""
    settings = clip_config(config.model.architecture)
    settings.text_config.eos_token_id = tokenizer.eos_token_id
    settings.text_config.bos_token_id = tokenizer.bos_token_id
    settings.text_config.pad_token_id = tokenizer.pad_token_id
    clip = CLIPModel(settings)
    return PiSeg(config.model, ClipBackbone(clip, tokenizer, config.model))


def load_tokenizer(source: str | None) -> CLIPTokenizer:
    """The CLIP tokenizer (hub id or local folder); None = the byte-level one of random-weight models."""
    if source is None:
        return byte_level_tokenizer()
    try:
        return CLIPTokenizer.from_pretrained(source)
    except OSError as error:
        raise ReleasedCheckpointError(
            f"cannot load the CLIP tokenizer from {source!r} (a local folder with "
            f"vocab.json and merges.txt, or a cached hub id): {error}"
        ) from error


def convert_released(
    source: Path,
    out: Path,
    class_names: list[str],
    taxonomy_version: str,
    base: PiSegConfig | None = None,
    tokenizer_source: str | None = "auto",
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Write a Pi-Seg checkpoint made from a released one; returns a summary of what was converted.

    `base` gives the settings the weights do not carry (evaluation scheme, noise families); by default the
    preset of the backbone the weights show. `tokenizer_source="auto"` takes that preset's CLIP id."""
    state = read_released(source, trust_pickle)
    architecture = infer_architecture(state)
    if base is None:
        base = preset(backbone_for(architecture))
    shown = known_backbone(architecture)
    if (
        shown is not None and shown != base.model.backbone
    ):  # e.g. ViT-L weights with ViT-B's resolution and guidance blocks
        raise ReleasedCheckpointError(
            f"{source}: the weights are a {shown} CLIP but the configuration is {base.model.backbone}"
        )
    if tokenizer_source == "auto":
        tokenizer_source = base.model.clip
    config = model_config_for(state, architecture, base, tokenizer_source)
    tokenizer = load_tokenizer(tokenizer_source)
    model = build_converted_model(config, tokenizer)
    weights = convert_state_dict(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    extra = sorted(set(weights) - set(expected))
    if missing or wrong or extra:
        details = [
            f"missing: {', '.join(missing[:8])}" if missing else "",
            f"wrong shape: {', '.join(wrong[:8])}" if wrong else "",
            f"not in this configuration: {', '.join(extra[:8])}" if extra else "",
        ]
        raise ReleasedCheckpointError(
            f"{source}: the released weights do not fit the configuration (" + "; ".join(d for d in details if d) + ")"
        )
    model.load_state_dict(weights)
    save_checkpoint(out, model, config, class_names, taxonomy_version)
    return {
        "source": str(source),
        "out": str(out),
        "backbone": config.model.backbone,
        "tensors": len(weights),
        "parameters": sum(t.numel() for t in weights.values()),
        "text_spm": config.model.spm.text,
        "image_spm": config.model.spm.image,
        "reduction": config.model.spm.reduction,
        "layers": config.model.num_layers,
        "classes": len(class_names),
    }
