"""Fetch a preset's weights ahead of time, and tell which presets a machine can run offline.

Weights go to the Hugging Face cache layout (the default cache, or `cache_dir`), so the presets'
hub ids and revisions resolve unchanged on a machine that later builds with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.models.config import load_models_config
from pipeline.models.presets import PRESETS
from pipeline.models.registry import STAGES
from pipeline.models.spec import HubWeights

# Framework duplicates of the same weights that transformers never reads here.
IGNORED = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "tf_model*", "flax_model*", "rust_model*", "coreml/*"]
WEIGHT_FILES = ("*.safetensors", "*.bin")


@dataclass
class Fetched:
    weights: HubWeights
    commit: str | None  # the commit the revision resolved to: what to pin
    error: str | None = None


def preset_weights(preset: str) -> list[HubWeights]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = load_models_config(preset)
    return list(dict.fromkeys(w for stage in STAGES for w in getattr(config, stage).weights()))


def fetch(preset: str, cache_dir: Path | None = None) -> list[Fetched]:
    """Download each repository of the preset once (already cached files are not downloaded again)."""
    from huggingface_hub import snapshot_download

    results = []
    for weights in preset_weights(preset):
        try:
            folder = snapshot_download(
                weights.repo_id, revision=weights.revision, cache_dir=cache_dir, ignore_patterns=IGNORED
            )
            results.append(Fetched(weights, Path(folder).name))
        except Exception as error:  # noqa: BLE001  network, auth, offline, disk: each repo reported, the rest go on
            results.append(Fetched(weights, None, f"{type(error).__name__}: {error}"))
    return results


def missing(preset: str, cache_dir: Path | None = None) -> list[tuple[HubWeights, str]]:
    """The preset's repositories not complete in the cache (a config and a weights file), with why."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    absent = []
    for weights in preset_weights(preset):
        try:
            folder = Path(
                snapshot_download(
                    weights.repo_id, revision=weights.revision, cache_dir=cache_dir, local_files_only=True
                )
            )
        except (LocalEntryNotFoundError, OSError):
            absent.append((weights, "not in the cache"))
            continue
        if not (folder / "config.json").is_file() or not any(any(folder.glob(p)) for p in WEIGHT_FILES):
            absent.append((weights, f"incomplete in {folder}"))
    return absent
