"""The stage registry: the one place that knows a build's stages, in order.

    caption -> parse -> match -> detect -> segment -> merge -> domain   (then write, never cached)

For each stage it says whether the stage runs a model (model stages hold the process's model slot
and carry Prefect's `gpu` tag), which fields of a `TileState` it sets (what the stage cache stores
for it: its output and nothing more, see `pipeline/build/stage_cache.py`), and what its output depends on
besides its input (its fingerprint). Cache keys chain: a stage's key hashes the previous stage's key,
so changing one threshold changes the keys of that stage and of every stage after it, and of no
stage before it. `ovrsis annotate` and the `build-ovrsis95k` flow both run batches through
`Annotator.run_batch`, which walks this registry (docs/architecture.md, "Stages and cache keys").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str
    model: bool  # runs a model: holds the model slot (`gpu_concurrency`) and the `gpu` tag
    writes: tuple[str, ...]  # TileState fields it sets; "record.NAME" for a field of the tile's record


STAGES: tuple[Stage, ...] = (
    Stage("caption", True, ("captions", "used_models", "record.captions")),
    Stage("parse", False, ("parsed",)),
    Stage("match", False, ("prompts", "record.phrases", "record.categories", "record.unmatched", "record.negated")),
    Stage("detect", True, ("detections", "used_models")),
    Stage("segment", True, ("masks", "used_models")),
    Stage("merge", False, ("mask_png", "record.instances", "record.conflicts", "record.semantic_mask")),
    Stage("domain", False, ("record.domain", "record.provenance")),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
MODEL_STAGES: frozenset[str] = frozenset(stage.name for stage in STAGES if stage.model)


def digest(*parts: object) -> str:
    """A cache key: sha256 of the parts as canonical JSON (32 hex digits)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def stage_fingerprints(
    models: Mapping[str, object],
    taxonomy_version: str,
    matching: object,
    merge: object,
    package_version: str,
    schema_version: int,
) -> dict[str, object]:
    """What each stage's output depends on besides its input: code version, the model specs of its
    model, spaCy's model, the taxonomy and lexicon, the thresholds of its configuration section."""
    import spacy

    from pipeline.stages.phrases import SPACY_MODEL
    from taxonomy.loader import load_lexicon, load_taxonomy

    code = {"package": package_version, "schema": schema_version}
    return {
        "caption": [code, models["captioner"]],
        "parse": [code, SPACY_MODEL, spacy.__version__],
        "match": [code, taxonomy_version, matching, digest(load_lexicon())],
        "detect": [code, models["detector"]],
        "segment": [code, models["segmenter"]],
        "merge": [code, taxonomy_version, merge],
        "domain": [code, load_taxonomy("domains").version],
    }


def batch_key(tiles: Sequence[tuple[str, str]], tiling: object) -> str:
    """The identity of a batch's input: its tiles' keys and source digests, in order, and the tiling."""
    return digest("batch", [list(t) for t in tiles], tiling)


def chained_keys(first: str, fingerprints: Mapping[str, object], captions: Sequence[object]) -> dict[str, str]:
    """Each stage's cache key from the batch key: the previous key, the stage's fingerprint, and for
    the caption stage the captions the file supplies (editing the file reruns the tiles it touches)."""
    keys, key = {}, first
    for stage in STAGE_NAMES:
        key = digest(stage, key, fingerprints[stage], list(captions) if stage == "caption" else None)
        keys[stage] = key
    return keys


def given_captions(key: str, source_path: str, captions: Mapping[str, list[str]]) -> list[str]:
    """Captions supplied for a tile: by tile key, else by its source file's stem, else by its name."""
    path = Path(source_path)
    for name in (key, path.stem, path.name):
        if name in captions:
            return captions[name]
    return []
