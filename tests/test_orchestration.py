"""The orchestration core on its own: the stage cache, the bounded window, records on disk by key."""

from __future__ import annotations

import json
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_annotate import CAPTIONS, write_scene

from pipeline.build.annotate import AnnotateConfig, Annotator
from pipeline.build.batching import in_order
from pipeline.build.stage_cache import StageCache, cache_stats, prune_cache, write_used_keys
from pipeline.build.tile_state import TileState
from pipeline.dataset.record_store import sort_records
from pipeline.dataset.tile_table import TileRows, TileTable
from pipeline.raster.ingest import RasterSource, TilingConfig
from pipeline.stages.registry import MODEL_STAGES, STAGE_NAMES, STAGES, chained_keys, stage_fingerprints
from taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_models):
    """One batch of tiles of a generated scene, with the annotator that runs the stages on it."""
    folder = tmp_path_factory.mktemp("scene")
    path = write_scene(folder / "in")
    config = AnnotateConfig(tiling=TilingConfig(128))
    annotator = Annotator(load_taxonomy("ovrsis95k"), tiny_models, folder / "out", config, captions=CAPTIONS)
    with RasterSource(path, config.bands, "scene") as source:
        tiles = [t for t in source.tiles(config.tiling) if hasattr(t, "image")][:4]
    pixels = {t.record.key: (t.image, t.valid) for t in tiles}
    return annotator, [t.record for t in tiles], lambda record: pixels[record.key]


def fresh_states(records):
    return [TileState(record.model_copy(deep=True)) for record in records]


def keys_for(name: str) -> dict[str, str]:
    fingerprints = {stage: [name] for stage in STAGE_NAMES}
    return chained_keys(name, fingerprints, [])


def test_registry_matches_the_annotator_and_marks_the_model_stages(batch):
    annotator, _, _ = batch
    assert list(STAGE_NAMES) == list(annotator.stages) and MODEL_STAGES == {"caption", "detect", "segment"}


def test_restored_batch_equals_a_fresh_run_and_runs_no_model(tmp_path, batch, tiny_models):
    annotator, records, pixels = batch
    cache, keys = StageCache(tmp_path), keys_for("a")
    first = fresh_states(records)
    annotator.run_batch(first, pixels, cache, keys)
    assert any(s.record.instances for s in first), "the tiny models found nothing to cache"
    encoder_calls = tiny_models.segmenter.image_encoder_calls
    restored = fresh_states(records)
    seconds = annotator.run_batch(restored, pixels, cache, keys)
    assert not seconds and tiny_models.segmenter.image_encoder_calls == encoder_calls  # every stage restored
    for a, b in zip(first, restored):
        assert a.record.model_dump() == b.record.model_dump()
        assert a.mask_png == b.mask_png and a.masks == b.masks and a.detections == b.detections
    # a stage file holds that stage's fields only, as plain JSON (loading a cache file runs no code)
    payload = json.loads(zlib.decompress(cache.path("segment", keys["segment"]).read_bytes()))
    assert set(payload[0]) == {"masks", "used_models", "record__quarantine"}


def test_changed_merge_key_reruns_merge_and_domain_only(tmp_path, batch):
    annotator, records, pixels = batch
    cache = StageCache(tmp_path)
    fingerprints = {stage: ["v1"] for stage in STAGE_NAMES}
    annotator.run_batch(fresh_states(records), pixels, cache, chained_keys("b", fingerprints, []))
    fingerprints["merge"] = ["v2"]
    seconds = annotator.run_batch(fresh_states(records), pixels, cache, chained_keys("b", fingerprints, []))
    assert set(seconds) == {"merge", "domain"}


def test_damaged_cache_file_is_a_miss_and_is_rewritten(tmp_path, batch):
    annotator, records, pixels = batch
    cache, keys = StageCache(tmp_path), keys_for("c")
    annotator.run_batch(fresh_states(records), pixels, cache, keys)
    damaged = cache.path("detect", keys["detect"])
    damaged.write_bytes(damaged.read_bytes()[:20])
    states = fresh_states(records)
    assert not cache.restore(STAGES[STAGE_NAMES.index("detect")], keys["detect"], states)
    assert all(not s.detections for s in states), "a failed restore must change nothing"
    seconds = annotator.run_batch(fresh_states(records), pixels, cache, keys)
    assert set(seconds) == {"detect"} and json.loads(zlib.decompress(damaged.read_bytes()))


def test_stats_and_prune_keep_what_the_last_build_used(tmp_path, batch):
    annotator, records, pixels = batch
    cache, old, new = StageCache(tmp_path), keys_for("old"), keys_for("new")
    annotator.run_batch(fresh_states(records), pixels, cache, old)
    annotator.run_batch(fresh_states(records), pixels, cache, new)
    with pytest.raises(FileNotFoundError, match="no completed build"):
        prune_cache(tmp_path)
    write_used_keys(tmp_path, new.values(), tiles=len(records))
    stats = cache_stats(tmp_path)
    assert sum(stats.files.values()) == 14 and stats.unused_files == 7 and stats.last_build_tiles == 4
    removed, freed = prune_cache(tmp_path)
    assert removed == 7 and freed == stats.unused_bytes
    assert all(cache.path(stage, key).is_file() for stage, key in new.items())
    assert not any(cache.path(stage, key).exists() for stage, key in old.items())


def test_prune_also_frees_the_sample_parts_the_last_shards_did_not_hold(tmp_path, batch):
    """Encoded shard parts (pipeline.dataset.shards.SampleCache) live in the same storage folder: stats count them
    and prune removes those the last build's shards did not use, as it does stage files."""
    import numpy as np

    from pipeline.dataset.shards import SampleCache, ShardConfig

    _, records, _ = batch
    first, second = SampleCache(tmp_path / "samples", ShardConfig()), SampleCache(tmp_path / "samples", ShardConfig())
    image = np.zeros((16, 16, 3), np.uint8)
    first.store_image(records[0], image)
    first.store_image(records[1], image)
    assert second.image(records[0]) is not None  # a later build's shards hold only this one
    write_used_keys(tmp_path, sorted(second.used), tiles=1)
    stats = cache_stats(tmp_path)
    assert stats.files["samples"] == 2 and stats.unused_files == 1
    removed, _ = prune_cache(tmp_path)
    assert removed == 1 and second.image(records[0]) is not None and second.image(records[1]) is None


def test_fingerprints_name_what_each_stage_depends_on():
    models = {"captioner": {"model": "c"}, "detector": {"model": "d"}, "segmenter": {"model": "s"}}
    base = stage_fingerprints(models, "tax1", {"threshold": 0.7}, {"min_area": 16}, "1.0", 3)
    other = stage_fingerprints(
        models | {"detector": {"model": "d2"}}, "tax1", {"threshold": 0.7}, {"min_area": 16}, "1.0", 3
    )
    assert [s for s in STAGE_NAMES if base[s] != other[s]] == ["detect"]
    keys, changed = chained_keys("k", base, []), chained_keys("k", other, [])
    assert [s for s in STAGE_NAMES if keys[s] != changed[s]] == ["detect", "segment", "merge", "domain"]


def test_in_order_bounds_the_work_in_flight_and_keeps_the_order():
    running, most = 0, 0
    lock = threading.Lock()
    pulled = []

    def work(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * (item % 3))
        with lock:
            running -= 1
        return item * 10

    def items():
        for item in range(12):
            pulled.append(item)
            yield item

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = []
        for result in in_order(items(), lambda item: pool.submit(work, item), window=3):
            results.append(result)
            assert len(pulled) <= len(results) + 3  # the input is read only as far ahead as the window
    assert results == [i * 10 for i in range(12)] and most <= 3


def test_in_order_raises_the_first_failure():
    def work(item: int) -> int:
        if item == 2:
            raise RuntimeError("tile 2 failed")
        return item

    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(RuntimeError, match="tile 2"):
        list(in_order(range(5), lambda item: pool.submit(work, item), window=2))


def test_records_sorted_by_key_and_read_back_by_offset(tmp_path, batch):
    _, records, _ = batch
    unsorted = tmp_path / "unsorted.jsonl"
    unsorted.write_text("".join(r.model_dump_json() + "\n" for r in reversed(records)))
    index = sort_records(unsorted, tmp_path / "records.jsonl")
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == sorted(r.key for r in records)
    subset = index.subset([records[2].key, records[0].key])
    assert subset[records[2].key] == records[2] and len(subset) == 2
    assert sorted(r.key for r in subset.values()) == sorted([records[0].key, records[2].key])
    unsorted.write_text("".join(r.model_dump_json() + "\n" for r in [records[0], records[0]]))
    with pytest.raises(ValueError, match="appears twice"):
        sort_records(unsorted, tmp_path / "again.jsonl")


def test_tile_rows_give_the_same_table_as_the_records(tmp_path, batch):
    annotator, records, pixels = batch
    states = fresh_states(records)
    annotator.run_batch(states, pixels)
    done = [s.record for s in states]
    rows = TileRows()
    for record in reversed(done):
        rows.add(record)
    table, reference = rows.table(["building"]), TileTable.from_records(done, ["building"])
    assert table.keys.tolist() == reference.keys.tolist() and table.categories == reference.categories
    assert np.array_equal(table.pixels.toarray(), reference.pixels.toarray()) and np.array_equal(
        table.domain, reference.domain
    )


def test_batches_starting_at_once_share_one_annotator(tmp_path, tiny_models_yaml):
    """The thread runner starts two batch tasks at once: they must get one Annotator (one set of
    models behind one load lock). Two loaded models side by side, and a SAM built while transformers
    had torch patched came out empty: a batch of good tiles quarantined ("meta tensor")."""
    from flows.sample_build import make_imagery, write_config
    from pipeline.build.config import load_build_config
    from pipeline.build.plan import annotator_of

    imagery = make_imagery(tmp_path / "rasters", count=1, size=128, broken=False)
    config = load_build_config(write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, tmp_path / "out"))
    threads = 8
    start = threading.Barrier(threads)

    def first_call(_: int) -> Annotator:
        start.wait()
        return annotator_of(config)

    with ThreadPoolExecutor(threads) as pool:
        annotators = list(pool.map(first_call, range(threads)))
    assert all(annotator is annotators[0] for annotator in annotators)
    # a worker that outlives a build: models, taxonomy or captions changed -> another Annotator, built anew
    assert annotator_of(config, "other inputs") is not annotators[0]
    assert annotator_of(config, "other inputs") is annotator_of(config, "other inputs")


def test_rebuild_with_every_stage_cached_reads_no_pixel(tmp_path, tiny_models_yaml, monkeypatch):
    """A batch task whose stages are all cached restores them without reading its tiles again, gives
    the first run's records, and finds each tile's image part already encoded in the sample cache
    (issue 32: reading and encoding 1024 px tiles again was most of a rebuild with nothing changed)."""
    from flows.sample_build import make_imagery, write_config
    from pipeline.build.config import load_build_config
    from pipeline.build.plan import BuildPlan, annotate_batch, annotator_of, sample_cache

    imagery = make_imagery(tmp_path / "rasters", count=1, size=256, broken=False)
    config = load_build_config(write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, tmp_path / "out"))
    plan = BuildPlan(config)
    records = [
        s.record for s in plan.tiles(sorted(imagery.glob("*.tif")), {p: p.stem for p in imagery.glob("*.tif")}, None)
    ]
    states = [TileState(r.model_copy(deep=True)) for r in records[:4]]
    keys = plan.keys(states)
    first, _ = annotate_batch(config, states, keys)
    samples = sample_cache(config)
    assert all(samples.has_image(s.record) for s in states if s.live)

    annotator, reads = annotator_of(config), []
    load = annotator.pixels.load
    monkeypatch.setattr(
        annotator.pixels, "load", lambda record, tiling: reads.append(record.key) or load(record, tiling)
    )
    again, seconds = annotate_batch(config, [TileState(r.model_copy(deep=True)) for r in records[:4]], keys)
    assert again == first and reads == [] and not set(seconds) - {"ingest", "write"}
