"""Checkpoints: one self-contained file (configuration, class names, CLIP shape and tokenizer, weights,
and for resuming the optimizer, schedule, step and RNG states). Loading needs no hub access.

A checkpoint is data, not code: everything in it is a tensor, number, string, list, tuple or dict, and it
is read with `torch.load(weights_only=True)`, so a file that would run code when unpickled is refused."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piseg.config import PiSegConfig, config_from_dict
from piseg.modeling.clip_backbone import saved_clip, tokenizer_files
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked."""


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
    return payload


def error_summary(error: Exception) -> str:
    """torch's unpickling messages run to many coloured lines: the line naming the refused global, else the first."""
    lines = [line.strip() for line in ANSI_ESCAPES.sub("", str(error)).splitlines() if line.strip()]
    refused = [line for line in lines if CODE_IN_PICKLE.search(line)]
    return (refused or lines or [type(error).__name__])[0][:300]


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[PiSeg, PiSegConfig, dict[str, Any]]:
    """The model saved in a checkpoint, in eval mode, with its configuration and the raw payload."""
    payload = read_checkpoint(path)
    config = config_from_dict(payload["config"])
    model = PiSeg(config.model, saved_clip(payload["clip_settings"], payload["tokenizer_files"], config.model))
    restore_weights(model, payload, path)
    return model.to(device).eval(), config, payload


def restore_weights(model: PiSeg, payload: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: its weights do not fit this model's configuration ({str(error)[:300]})"
        ) from error


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
