"""The build's stage cache: what resuming and selective reruns need, compactly, as plain data.

One file per stage and batch, `STORAGE/stages/STAGE/KEY.json.z`: zlib-compressed JSON holding, per
tile, only the fields that stage sets (`Stage.writes`) and the tile's quarantine. A batch is
restored by applying the files of its stages in order, so a mask is stored once as COCO RLE (by
segment) and once as the merged PNG (by merge), never again by every later stage. JSON rather
than pickle: a cache file is data, and loading it never runs code. Writes are atomic (temporary +
rename), so a killed build leaves whole files or none; an unreadable file is a miss and is rewritten.

Ingest results (a raster's tile records) live beside them in `stages/ingest/`. A completed build
writes the keys it used to `STORAGE/last-build.keys`; `ovrsis cache prune` deletes every other file
(docs/architecture.md, "Stages and cache keys").
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from pipeline.build.tile_state import TileState
from pipeline.dataset.records import TileRecord
from pipeline.files.atomic import atomic_path
from pipeline.stages.registry import Stage

SUFFIX = ".json.z"
USED_KEYS = "last-build.keys"
_RECORDS_OF_RASTER = "ingest"


class _Delta(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")


@cache
def _delta_model(stage: Stage) -> type[_Delta]:
    """A model holding exactly the fields `stage` sets, typed from TileState and TileRecord."""
    state_types = get_type_hints(TileState)
    fields = {"record__quarantine": (TileRecord.model_fields["quarantine"].annotation, None)}
    for name in stage.writes:
        if name.startswith("record."):
            field = TileRecord.model_fields[name.removeprefix("record.")]
            fields[name.replace(".", "__")] = (field.annotation, None)
        else:
            fields[name] = (state_types[name], None)
    return create_model(f"{stage.name.title()}Output", __base__=_Delta, **fields)


def _read(state: TileState, name: str) -> object:
    if name.startswith("record__"):
        return getattr(state.record, name.removeprefix("record__"))
    return getattr(state, name)


def _write(state: TileState, name: str, value: object) -> None:
    if name.startswith("record__"):
        setattr(state.record, name.removeprefix("record__"), value)
    else:
        setattr(state, name, value)


class StageCache:
    """Stage outputs by (stage, key) under `folder/stages/`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.root = self.folder / "stages"

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / f"{key}{SUFFIX}"

    def restore(self, stage: Stage, key: str, states: Sequence[TileState]) -> bool:
        """Apply the cached output of `stage` to `states` in place; False (nothing changed) on a miss."""
        payload = self._load(stage.name, key)
        if payload is None or len(payload) != len(states):
            return False
        model = _delta_model(stage)
        try:
            deltas = [model.model_validate(item) for item in payload]
        except ValidationError:
            return False
        for state, delta in zip(states, deltas):
            for name in model.model_fields:
                _write(state, name, getattr(delta, name))
        return True

    def store(self, stage: Stage, key: str, states: Sequence[TileState]) -> None:
        model = _delta_model(stage)
        payload = [
            model(**{name: _read(state, name) for name in model.model_fields}).model_dump(mode="json")
            for state in states
        ]
        self._save(stage.name, key, payload)

    def raster_records(self, key: str) -> list[TileRecord] | None:
        """The tile records an ingest of one raster produced, or None on a miss."""
        payload = self._load(_RECORDS_OF_RASTER, key)
        if payload is None:
            return None
        try:
            return [TileRecord.model_validate(item) for item in payload]
        except ValidationError:
            return None

    def store_raster_records(self, key: str, records: Iterable[TileRecord]) -> None:
        self._save(_RECORDS_OF_RASTER, key, [r.model_dump(mode="json") for r in records])

    def _load(self, stage: str, key: str) -> list | None:
        try:
            payload = json.loads(zlib.decompress(self.path(stage, key).read_bytes()))
        except (OSError, zlib.error, ValueError):  # missing, cut short or damaged: recompute and rewrite
            return None
        return payload if isinstance(payload, list) else None

    def _save(self, stage: str, key: str, payload: list) -> None:
        path = self.path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_bytes(zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6))


@dataclass
class CacheStats:
    files: Counter  # per stage
    bytes: Counter  # per stage
    unused_files: int = 0
    unused_bytes: int = 0
    last_build_tiles: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def cache_files(folder: Path) -> Iterable[tuple[str, str, Path]]:
    """(stage, key, path) of every cache file under `folder/stages`, then of the encoded sample parts
    under `folder/samples` (pipeline.dataset.shards.SampleCache; stage "samples", the key its file name)."""
    root = Path(folder) / "stages"
    if root.is_dir():
        for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(stage_dir.glob(f"*/*{SUFFIX}")):
                yield stage_dir.name, path.name.removesuffix(SUFFIX), path
    for path in sorted((Path(folder) / "samples").glob("*/*")):
        if path.suffix in (".image", ".mask"):
            yield "samples", path.name, path


def write_used_keys(folder: Path, keys: Iterable[str], tiles: int) -> None:
    """The keys a completed build read or wrote (what `prune` keeps), and its tile count."""
    with atomic_path(Path(folder) / USED_KEYS) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(f"# tiles {tiles}\n")
            for key in keys:
                handle.write(key + "\n")


def _used_keys(folder: Path) -> tuple[set[str] | None, int | None]:
    path = Path(folder) / USED_KEYS
    if not path.is_file():
        return None, None
    lines = path.read_text(encoding="utf-8").splitlines()
    tiles = int(lines[0].split()[-1]) if lines and lines[0].startswith("# tiles") else None
    return {line for line in lines if line and not line.startswith("#")}, tiles


def cache_stats(folder: Path) -> CacheStats:
    used, tiles = _used_keys(folder)
    stats = CacheStats(Counter(), Counter(), last_build_tiles=tiles)
    for stage, key, path in cache_files(folder):
        size = path.stat().st_size
        stats.files[stage] += 1
        stats.bytes[stage] += size
        if used is not None and key not in used:
            stats.unused_files += 1
            stats.unused_bytes += size
    return stats


def prune_cache(folder: Path, everything: bool = False) -> tuple[int, int]:
    """Delete the cache files the last completed build did not use (all of them with `everything`);
    returns (files, bytes) removed. Without a completed build's key list nothing is removed unless
    `everything` is asked: a resumable half-build's files are what resuming needs."""
    used, _ = _used_keys(folder)
    if used is None and not everything:
        raise FileNotFoundError(
            f"{Path(folder) / USED_KEYS}: no completed build recorded its keys here; "
            "nothing pruned (use --all to empty the cache)"
        )
    removed = freed = 0
    for _, key, path in cache_files(folder):
        if everything or key not in used:
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
            removed += 1
    for directory in sorted(
        [*(Path(folder) / "stages").glob("*/*"), *(Path(folder) / "samples").glob("*")], reverse=True
    ):
        if directory.is_dir() and not any(directory.iterdir()):
            os.rmdir(directory)
    if everything:
        (Path(folder) / USED_KEYS).unlink(missing_ok=True)
    return removed, freed
