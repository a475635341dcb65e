"""Pi-Seg configuration: the model, the training recipe and the evaluation scheme as plain dataclasses.

Defaults are the paper's recipe (docs/piseg.md, "Training recipe"). A YAML file overrides any field by
name; unknown names are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from piseg.modeling.prompts import PROMPT_TEMPLATE

NOISE_FAMILIES = ("gaussian", "laplace", "uniform", "student-t")
INFERENCE_MODES = ("sliding", "whole")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


@dataclass
class ClipArchitecture:
    """The CLIP encoders' shapes, enough to build them with random weights (no download)."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    patch_size: int
    pretrained_image_size: int  # the resolution the positional embedding was trained at
    projection_dim: int
    vocab_size: int = 49408
    max_text_length: int = 77


@dataclass
class SPMConfig:
    """Semantic-aware perturbation modules (training only). Both off = the CAT-Seg baseline."""

    text: bool = True
    image: bool = True
    text_noise: str = "gaussian"
    image_noise: str = "gaussian"
    student_t_df: float = 5.0  # used by the "student-t" family (the paper tries 3, 5, 10)
    sigma_t: float = 0.02  # std of the N(0, sigma_t^2) initialisation of Text-SPM's mu and sigma
    reduction: int = 1  # Image-SPM's r: every released config uses 1 (the paper's text says 2)


@dataclass
class ModelConfig:
    backbone: str = "vit-b"
    clip: str | None = "openai/clip-vit-base-patch16"  # hub id or local folder; None = random weights
    architecture: ClipArchitecture | None = None  # filled from the backbone preset when None
    clip_resolution: int = 384  # crops are resized to this inside the model (ViT-L: 336)
    guidance_layers: tuple[int, int] = (3, 7)
    prompt_template: str = PROMPT_TEMPLATE
    hidden_dim: int = 128
    num_layers: int = 2
    heads: int = 4
    window_size: int = 12
    class_pool_train: int = 2  # class aggregation works on 2x2-pooled features in training, 1x1 at test
    pad_len: int = (
        256  # class attention pads to this many classes (with more, all attend; the released code keeps the top 256)
    )
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_dims: tuple[int, int] = (256, 128)
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    spm: SPMConfig = field(default_factory=SPMConfig)


@dataclass
class TrainConfig:
    taxonomy: str | None = "ovrsis95k"  # the shards' class names must be this taxonomy's (None: take the shards')
    iters: int = 40_000
    batch_size: int = 8  # total over all processes
    lr: float = 2e-4
    weight_decay: float = 1e-4
    clip_lr_multiplier: float = 0.01
    grad_clip: float = 0.01  # by full-model norm
    crop: int = 384
    resize_short: int = 384
    max_long: int = 1333
    pad_image: int = 128
    color_jitter: bool = True  # detectron2's ColorAugSSD, as the released configs (COLOR_AUG_SSD: True)
    hflip: bool = True
    ignore_mode: str = "negative"  # "negative": ignore pixels are all-zero targets (released code); "exclude"
    amp: bool = False  # False: fp32 with TF32 matmuls on CUDA, as released; True: bfloat16 autocast (CPUs: ~6x slower)
    val_every: int = 5_000
    val_max_samples: int | None = None
    checkpoint_every: int = 1_000
    log_every: int = 20
    seed: int = 0
    shuffle_buffer: int | None = (
        None  # samples; None: sized to the data (all training samples, within shuffle_memory_gb)
    )
    shuffle_memory_gb: float = 2.0  # per loader worker: the most shard bytes a data-sized buffer holds
    workers: int = 2
    on_corrupt_shard: str = "error"  # or "skip": leave the shard out, warn and count it


@dataclass
class EvalConfig:
    """Inference as released. "sliding" (OVRSISBench V2, validation, predict): resize, four crops + one
    global view, averaged. "whole": the image padded and resized to one crop (the V1 scripts' no-slide
    evaluation). `piseg/inference/scheme.py` says each step."""

    resize: int = 640
    crop: int = 384
    stride: int = 256
    mode: str = "sliding"
    whole_pad: int = 32  # "whole": pad to a multiple of this first (the released SIZE_DIVISIBILITY); 0 = no padding


@dataclass
class PiSegConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "vit-b": {
        "model": {
            "backbone": "vit-b",
            "clip": "openai/clip-vit-base-patch16",
            "clip_resolution": 384,
            "guidance_layers": (3, 7),
            "architecture": ClipArchitecture(512, 12, 8, 2048, 768, 12, 12, 3072, 16, 224, 512),
        },
    },
    "vit-l": {
        "model": {
            "backbone": "vit-l",
            "clip": "openai/clip-vit-large-patch14-336",
            "clip_resolution": 336,
            "guidance_layers": (7, 15),
            "architecture": ClipArchitecture(768, 12, 12, 3072, 1024, 24, 16, 4096, 14, 336, 768),
        },
    },
    # For tests and demos: a few-layer CLIP with random weights; same modules, tiny widths.
    "tiny": {
        "model": {
            "backbone": "tiny",
            "clip": None,
            "clip_resolution": 64,
            "guidance_layers": (0, 1),
            "architecture": ClipArchitecture(32, 2, 2, 64, 32, 3, 2, 64, 8, 32, 32, vocab_size=515, max_text_length=32),
            "hidden_dim": 32,
            "heads": 2,
            "window_size": 4,
            "pad_len": 64,
            "decoder_dims": (32, 16),
            "decoder_guidance_dims": (32, 16),
            "decoder_guidance_proj_dims": (8, 4),
        },
        "train": {
            "taxonomy": None,
            "iters": 200,
            "batch_size": 4,
            "lr": 1e-3,
            "crop": 64,
            "resize_short": 64,
            "max_long": 256,
            "val_every": 100,
            "checkpoint_every": 100,
            "log_every": 10,
            "shuffle_buffer": 64,
            "workers": 0,
        },
        "eval": {"resize": 96, "crop": 64, "stride": 32},
    },
}


def preset(backbone: str) -> PiSegConfig:
    if backbone not in PRESETS:
        raise ConfigError(f"unknown backbone {backbone!r} (have {', '.join(PRESETS)})")
    return _apply(PiSegConfig(), PRESETS[backbone], "preset " + backbone)


def load_config(
    path: Path | None = None, backbone: str | None = None, overrides: dict[str, Any] | None = None
) -> PiSegConfig:
    """The backbone preset (file's `model.backbone`, else `backbone`, else vit-b), then the file, then overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read the configuration ({error})") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with model/train/eval sections")
    chosen = backbone or data.get("model", {}).get("backbone") or "vit-b"
    config = preset(chosen)
    config = _apply(config, data, str(path))
    if overrides:
        config = _apply(config, overrides, "command line")
    validate(config)
    return config


def config_from_dict(data: dict[str, Any]) -> PiSegConfig:
    """Rebuild a configuration saved with `to_dict` (e.g. inside a checkpoint)."""
    return _apply(PiSegConfig(), data, "checkpoint")


def _apply(obj: Any, data: dict[str, Any], origin: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping for {type(obj).__name__}, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{origin}: unknown setting {key!r} in {type(obj).__name__} (known: {', '.join(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _apply(current, value, origin)
        elif key == "architecture" and isinstance(value, dict):
            value = ClipArchitecture(**value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def validate(config: PiSegConfig) -> None:
    spm, model, train = config.model.spm, config.model, config.train
    for name in (spm.text_noise, spm.image_noise):
        if name not in NOISE_FAMILIES:
            raise ConfigError(f"unknown noise family {name!r} (have {', '.join(NOISE_FAMILIES)})")
    if "student-t" in (spm.text_noise, spm.image_noise) and spm.student_t_df <= 2:
        raise ConfigError(f"student_t_df must be > 2 for unit variance, got {spm.student_t_df}")
    if model.architecture is None:
        raise ConfigError(f"backbone {model.backbone!r} has no CLIP architecture")
    grid, remainder = divmod(model.clip_resolution, model.architecture.patch_size)
    if remainder or grid % model.window_size:
        raise ConfigError(
            f"clip_resolution {model.clip_resolution} "
            f"must give a token grid divisible by window_size {model.window_size}"
        )
    if max(model.guidance_layers) >= model.architecture.vision_layers - 1:
        raise ConfigError(
            f"guidance_layers {model.guidance_layers} "
            f"must come before the last of {model.architecture.vision_layers} blocks"
        )
    if train.ignore_mode not in ("negative", "exclude"):
        raise ConfigError(f"ignore_mode must be 'negative' or 'exclude', got {train.ignore_mode!r}")
    if train.on_corrupt_shard not in ("error", "skip"):
        raise ConfigError(f"on_corrupt_shard must be 'error' or 'skip', got {train.on_corrupt_shard!r}")
    if config.eval.crop > config.eval.resize:
        raise ConfigError("eval.crop must not exceed eval.resize")
    if config.eval.mode not in INFERENCE_MODES:
        raise ConfigError(f"eval.mode must be one of {', '.join(INFERENCE_MODES)}, got {config.eval.mode!r}")
