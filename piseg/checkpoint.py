"""Checkpoints: one self-contained file (configuration, class names, CLIP shape and tokenizer, weights,
and for resuming the optimizer, schedule, step and RNG states). Loading needs no hub access.

A checkpoint is data, not code: everything in it is a tensor, number, string, list, tuple or dict, and it
is read with `torch.load(weights_only=True)`, so a file that would run code when unpickled is refused. The
payload's structure is then checked before anything uses it (`payload_problem`), and its tokenizer files
are written only into a private temporary folder under known names (`clip_backbone.saved_tokenizer`)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovrsis.errors import CheckpointError
from piseg.config import ConfigError, PiSegConfig, config_from_dict
from piseg.modeling.clip_backbone import checked_tokenizer_files, saved_clip, tokenizer_files
from piseg.modeling.model import PiSeg

FORMAT = "piseg-checkpoint-1"
ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
# What torch's weights-only unpickler says of a global (a function, a class) it will not import.
CODE_IN_PICKLE = re.compile(r"GLOBAL \S+ was not an allowed global|whose module \S+ is blocked|\S+ must be \S+ to load")
# Settings that may change when a run is resumed; any other difference means another configuration.
RESUMABLE_CHANGES = {
    "iters",
    "val_every",
    "val_max_samples",
    "checkpoint_every",
    "log_every",
    "workers",
    "on_corrupt_shard",
}
# The entries every checkpoint has and the loaders use without further checks.
REQUIRED_ENTRIES = ("config", "class_names", "clip_settings", "tokenizer_files", "model")
PLAIN_SCALARS = (str, int, float, bool, type(None))
MAX_SETTINGS_DEPTH = 8  # CLIPConfig.to_dict nests three levels (text_config.id2label.0)


def save_checkpoint(
    path: Path,
    model: PiSeg,
    config: PiSegConfig,
    class_names: list[str],
    taxonomy_version: str,
    training_state: dict[str, Any] | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "class_names": class_names,
        "taxonomy_version": taxonomy_version,
        "clip_settings": model.backbone.clip.config.to_dict(),
        "tokenizer_files": tokenizer_files(model.backbone, config.model),
        "model": model.state_dict(),
        "training": training_state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".partial")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a Pi-Seg checkpoint, unpickled as plain data only (nothing in the file can run)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: no such checkpoint") from error
    except Exception as error:  # torch raises many types for a damaged or foreign file
        if CODE_IN_PICKLE.search(str(error)):
            raise CheckpointError(
                f"{path}: refused: it holds Python objects that could run code when loaded, not only "
                f"tensors and plain data ({error_summary(error)})"
            ) from error
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error_summary(error)})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Pi-Seg checkpoint (expected format {FORMAT})")
    problem = payload_problem(payload)
    if problem is not None:
        raise CheckpointError(f"{path}: refused: {problem}")
    return payload


def payload_problem(payload: dict[str, Any]) -> str | None:
    """What makes the payload unfit for the loaders, or None. Why: weights_only keeps code out, but the
    loaders index, unpack and write what they find (tokenizer files become files on disk), and a checkpoint
    may come from someone else; a wrong type is refused here with the entry named, not met as a traceback."""
    missing = [key for key in REQUIRED_ENTRIES if key not in payload]
    if missing:
        return f"it has no {', '.join(map(repr, missing))} entry"
    for key in ("config", "clip_settings"):
        if not isinstance(payload[key], dict):
            return f"{key!r} is a {type(payload[key]).__name__}, not a mapping of settings"
        problem = plain_problem(payload[key], key, MAX_SETTINGS_DEPTH)
        if problem is not None:
            return problem
    fetching = code_fetching_setting(payload["clip_settings"], "'clip_settings'")
    if fetching is not None:
        return fetching
    names = payload["class_names"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return "'class_names' is not a list of strings"
    try:
        checked_tokenizer_files(payload["tokenizer_files"])
    except ValueError as error:
        return str(error)
    weights = payload["model"]
    if not isinstance(weights, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in weights.items()
    ):
        return "'model' is not a mapping of parameter names to tensors"
    return None


# transformers settings that name code to fetch or run (remote modules, hub attention kernels): a
# checkpoint needs none of them, and with the `kernels` package installed they would load code.
CODE_SETTINGS = {"auto_map", "trust_remote_code", "custom_pipelines"}
IMPLEMENTATION_SETTINGS = {"attn_implementation", "experts_implementation"}  # also with a leading _
PLAIN_IMPLEMENTATIONS = (None, "eager", "sdpa")


def code_fetching_setting(settings: dict, where: str) -> str | None:
    """Where `settings` (CLIP settings, nested configs included) name code to fetch or run, or None."""
    for key, value in settings.items():
        implementation = isinstance(key, str) and key.lstrip("_") in IMPLEMENTATION_SETTINGS
        if key in CODE_SETTINGS or (
            implementation and not any(value is p or value == p for p in PLAIN_IMPLEMENTATIONS)
        ):
            return f"{where}.{key} names code to load ({str(value)[:80]!r}); a checkpoint carries data only"
        if isinstance(value, dict):
            problem = code_fetching_setting(value, f"{where}.{key}")
            if problem is not None:
                return problem
    return None


def plain_problem(value: object, where: str, depth: int) -> str | None:
    """None when `value` is plain data: None, bool, number or string, or lists and mappings (with such keys) of
    them nested at most `depth` deep; else where the first other value is. Why: the configuration and CLIP
    settings become dataclass fields and transformers keyword arguments, where only such values can mean
    what the file says."""
    if isinstance(value, PLAIN_SCALARS):
        return None
    if not isinstance(value, (list, tuple, dict)):
        return f"{where} is a {type(value).__name__}, not plain data (None, bool, number, string, list, mapping)"
    if depth == 0:
        return f"{where} nests deeper than {MAX_SETTINGS_DEPTH} levels"
    if isinstance(value, dict):
        odd = [key for key in value if not isinstance(key, PLAIN_SCALARS)]
        if odd:
            return f"{where} has a key that is a {type(odd[0]).__name__}, not a string or number"
        items = [(f"{where}.{key}", item) for key, item in value.items()]
    else:
        items = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
    return next((problem for name, item in items if (problem := plain_problem(item, name, depth - 1))), None)


def error_summary(error: Exception) -> str:
    """torch's unpickling messages run to many coloured lines: the line naming the refused global, else the first."""
    lines = [line.strip() for line in ANSI_ESCAPES.sub("", str(error)).splitlines() if line.strip()]
    refused = [line for line in lines if CODE_IN_PICKLE.search(line)]
    return (refused or lines or [type(error).__name__])[0][:300]


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[PiSeg, PiSegConfig, dict[str, Any]]:
    """The model saved in a checkpoint, in eval mode, with its configuration and the raw payload."""
    payload = read_checkpoint(path)
    config = saved_config(payload, path)
    model = saved_model(payload, config, path)
    restore_weights(model, payload, path)
    return model.to(device).eval(), config, payload


def saved_config(payload: dict[str, Any], path: Path) -> PiSegConfig:
    """The checkpoint's configuration; a setting this version does not know is the file's fault, named with it."""
    try:
        return config_from_dict(payload["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path}: its configuration is not usable ({one_line(error)})") from error


def saved_model(payload: dict[str, Any], config: PiSegConfig, path: Path) -> PiSeg:
    """The empty model the checkpoint describes. Why catch broadly: its CLIP settings and configuration come
    from the file, and transformers and torch raise many types for values they cannot build with (a width of
    "x", a negative depth); each is reported as one line naming the file, not a traceback."""
    try:
        backbone = saved_clip(payload["clip_settings"], payload["tokenizer_files"], config.model)
        return PiSeg(config.model, backbone)
    except Exception as error:
        raise CheckpointError(
            f"{path}: its settings do not build a model ({type(error).__name__}: {one_line(error)})"
        ) from error


def restore_weights(model: PiSeg, payload: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: its weights do not fit this model's configuration ({one_line(error)})"
        ) from error


def one_line(error: Exception) -> str:
    """An error's message on one line of at most 300 characters: the CLI prints a refusal as one `error:`
    line, and transformers' and torch's messages span several."""
    return " ".join(str(error).split())[:300]


def configuration_differences(saved: dict[str, Any], current: PiSegConfig) -> list[str]:
    """Settings that differ between a checkpoint and the run that wants to resume it."""
    now = current.to_dict()
    differences = []
    for section in ("model", "train", "eval"):
        for key in sorted(set(saved.get(section, {})) | set(now[section])):
            if section == "train" and key in RESUMABLE_CHANGES:
                continue
            old, new = saved.get(section, {}).get(key), now[section].get(key)
            if _plain(old) != _plain(new):
                differences.append(f"{section}.{key}: checkpoint {old!r}, now {new!r}")
    return differences


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def rng_state() -> dict[str, Any]:
    """The random generators' states as plain data (numpy's key as a tensor), so weights_only loading reads them."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"]["key"] = torch.from_numpy(numpy["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = {
        **state["numpy"],
        "state": {**state["numpy"]["state"], "key": state["numpy"]["state"]["key"].numpy().astype(np.uint32)},
    }
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
