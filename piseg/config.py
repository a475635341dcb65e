"""Pi-Seg configuration: the model, the training recipe and the evaluation scheme as plain dataclasses.

Defaults are the paper's recipe (docs/piseg.md, "Training recipe"). A YAML file overrides any field by
name; unknown names, values of the wrong type and sizes or counts below what can run are errors naming the
file and the setting, so a typo never silently falls back to a default or crashes a run hours later.
"""

from __future__ import annotations

import dataclasses
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovrsis.errors import ConfigError
from piseg.modeling.prompts import PROMPT_TEMPLATE
from piseg.yaml_files import read_yaml

NOISE_FAMILIES = ("gaussian", "laplace", "uniform", "student-t")
INFERENCE_MODES = ("sliding", "whole")


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
    student_t_df: float = 3.0  # the "student-t" family's df: the released configs' 3 (the paper tries 3, 5, 10)
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
    seed: int = 42  # the released configs' SEED
    shuffle_buffer: int | None = (
        None  # samples; None: sized to the data (all training samples, within shuffle_memory_gb)
    )
    # the most shard bytes one data-sized buffer holds (each loader worker of each process keeps one); None:
    # half this machine's memory shared by those buffers (training/batches.py `buffer_budget`)
    shuffle_memory_gb: float | None = None
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
    """The backbone preset (file's `model.backbone`, else `backbone`, else vit-b), then the file, then overrides.
    Every problem is a ConfigError whose message starts with the file's name (README: `error: FILE: problem`)."""
    data: Any = {}
    if path is not None:
        data = read_yaml(path, "configuration", ConfigError)
        if data is None:  # an empty file changes nothing
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with model/train/eval sections, got {_shown(data)}")
    model = data.get("model")
    named = model.get("backbone") if isinstance(model, dict) else None
    if backbone is None and named is not None and (not isinstance(named, str) or named not in PRESETS):
        raise ConfigError(f"{path}: model.backbone: unknown backbone {named!r} (have {', '.join(PRESETS)})")
    config = preset(backbone or named or "vit-b")
    config = _apply(config, data, str(path))
    if overrides:
        config = _apply(config, overrides, "command line")
    try:
        validate(config)
    except ConfigError as error:  # name the file: the values came from it (or from the command line)
        origin = " + ".join(name for name, given in ((str(path), path), ("command line", overrides)) if given)
        raise ConfigError(f"{origin}: {error}" if origin else str(error)) from error
    return config


def config_from_dict(data: dict[str, Any]) -> PiSegConfig:
    """Rebuild a configuration saved with `to_dict` (e.g. inside a checkpoint)."""
    return _apply(PiSegConfig(), data, "checkpoint")


def _apply(obj: Any, data: Any, origin: str) -> Any:
    """OBJ (a configuration dataclass) with DATA's settings; ORIGIN names where they come from in errors."""
    return _merge(type(obj), obj, data, origin, "")


def _merge(cls: type, current: Any, data: Any, origin: str, prefix: str) -> Any:
    """CURRENT (an instance of the dataclass CLS, or None for a section the configuration lacks) with DATA's
    settings, each checked against its field's type. Why by type hint: a YAML value of the wrong type (a
    string for a number, a number for a section) would otherwise reach the model or the trainer and fail
    there with a traceback; PREFIX ("train.") names the setting in the message."""
    section = prefix.rstrip(".") or "the configuration"
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: {section}: expected a mapping of settings, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    changes = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{origin}: unknown setting '{prefix}{key}' (known in {section}: {', '.join(hints)})")
        before = None if current is None else getattr(current, key)
        changes[key] = _value(hints[key], before, value, origin, f"{prefix}{key}")
    if current is not None:
        return dataclasses.replace(current, **changes)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in changes and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{origin}: {section} lacks {', '.join(missing)}")
    return cls(**changes)


def _options(hint: Any) -> tuple[Any, ...]:
    """The types a field accepts: both sides of `X | None`, else the hint itself."""
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _value(hint: Any, current: Any, value: Any, origin: str, where: str) -> Any:
    """VALUE for the field WHERE of type HINT, or a ConfigError saying what the field takes."""
    options = _options(hint)
    section = next((option for option in options if dataclasses.is_dataclass(option)), None)
    if section is not None and isinstance(value, dict):
        return _merge(section, current, value, origin, where + ".")
    if any(_fits(value, option) for option in options):
        return tuple(value) if isinstance(value, list) else value
    wanted = " or ".join(_describe(option) for option in options)
    raise ConfigError(f"{origin}: {where}: expected {wanted}, got {_shown(value)}")


def _fits(value: Any, option: Any) -> bool:
    if option is type(None):
        return value is None
    if option is bool:
        return isinstance(value, bool)
    if option is int:  # YAML's true/false are bools, and Python's bools are ints: not a count
        return isinstance(value, int) and not isinstance(value, bool)
    if option is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(option) is tuple:
        items = typing.get_args(option)
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(items)
            and all(_fits(item, kind) for item, kind in zip(value, items, strict=True))
        )
    return isinstance(value, option)  # str, or a dataclass instance (the presets' CLIP shapes)


def _describe(option: Any) -> str:
    if typing.get_origin(option) is tuple:
        items = typing.get_args(option)
        return f"a list of {len(items)} " + ("integers" if set(items) == {int} else "values")
    if dataclasses.is_dataclass(option):
        return "a mapping of settings"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(option, getattr(option, "__name__", str(option)))


def _shown(value: Any) -> str:
    """VALUE for an error line: its repr, cut short (a whole section pasted in the wrong place can be long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The least value each size, count or rate can run with: zero or less would divide by zero, build empty
# layers or never step, deep inside a run, instead of being refused with the file's name up front.
MINIMUMS: dict[str, float] = {
    "model.clip_resolution": 1,
    "model.hidden_dim": 1,
    "model.num_layers": 1,
    "model.heads": 1,
    "model.window_size": 1,
    "model.class_pool_train": 1,
    "model.pad_len": 1,
    "model.spm.reduction": 1,
    "model.spm.sigma_t": 0,
    "train.iters": 1,
    "train.batch_size": 1,
    "train.weight_decay": 0,
    "train.clip_lr_multiplier": 0,
    "train.crop": 1,
    "train.resize_short": 1,
    "train.max_long": 1,
    "train.val_every": 1,
    "train.val_max_samples": 1,
    "train.checkpoint_every": 1,
    "train.log_every": 1,
    "train.shuffle_buffer": 1,
    "train.workers": 0,
    "eval.resize": 1,
    "eval.crop": 1,
    "eval.stride": 1,
    "eval.whole_pad": 0,
}
POSITIVE = ("train.lr", "train.grad_clip", "train.shuffle_memory_gb")  # above zero, however small


def _template_fields(template: str) -> list[str] | None:
    """The replacement fields of a prompt template ("{}" gives [""]); None when the braces do not pair up."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return None


def _setting(config: PiSegConfig, name: str) -> Any:
    value: Any = config
    for part in name.split("."):
        value = getattr(value, part)
    return value


def validate(config: PiSegConfig) -> None:
    """Refuse settings that have the right type but cannot run together (messages name the setting)."""
    spm, model, train = config.model.spm, config.model, config.train
    for name, least in MINIMUMS.items():
        value = _setting(config, name)
        if value is not None and value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value!r}")
    for name in POSITIVE:
        if _setting(config, name) is not None and _setting(config, name) <= 0:
            raise ConfigError(f"{name} must be above 0, got {_setting(config, name)!r}")
    if _template_fields(model.prompt_template) != [""]:
        raise ConfigError(
            f"model.prompt_template must hold exactly one {{}} for the class name, got {model.prompt_template!r}"
        )
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
