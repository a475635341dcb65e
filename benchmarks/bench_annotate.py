"""Per-stage time per tile of the imagery stage on real tiles, and the non-model share.

1. Tiny models on the real samples (SpaceNet panchromatic, NAIP, NEON, UC Merced) with given
   captions: seconds per tile for ingest, caption, categories, detect, segment, merge, domain, write.
2. With --real-size: the detector and segmenter at real size (GroundingDINO's default architecture
   and SAM ViT-B, random weights: same compute as the released weights) on 1024x1024 tiles, to
   estimate the non-model share of a real build: (ingest + merge + domain + write) / model time.
Usage: python benchmarks/bench_annotate.py [--real-size]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import SHARED_REAL, require  # noqa: E402

from pipeline.annotate import AnnotateConfig, Annotator  # noqa: E402
from pipeline.ingest import TilingConfig  # noqa: E402
from pipeline.models.config import ModelSet, load_models_config  # noqa: E402
from taxonomy import load_taxonomy  # noqa: E402

INPUTS = ["spacenet/sample_geotiff.tif", "naip", "neon/OSBS_029.tif", "ucm_sample"]
CAPTION = "many buildings and green trees along a road with cars, near a river and some farmland"
NON_MODEL = ("ingest", "merge", "domain", "write")
MODEL = ("caption", "detect", "segment")


def run_tiny(tile_size: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        models = ModelSet(load_models_config(_tiny(Path(work))))
        taxonomy = load_taxonomy("ovrsis95k")
        totals, tiles = {}, 0
        for relative in INPUTS:
            source = require(SHARED_REAL / relative)
            stems = [p.stem for p in (source.glob("*.tif") if source.is_dir() else [source])]
            annotator = Annotator(taxonomy, models, Path(work) / "out" / relative.replace("/", "_"),
                                  AnnotateConfig(tiling=TilingConfig(tile_size)), captions={s: [CAPTION] for s in stems})  # fmt: skip
            if not tiles:  # warm-up: model loads are start-up, not per-tile cost
                annotator.process([])
                annotator.categorizer.categorize([[CAPTION]])
            summary = annotator.run(source)
            tiles += summary.annotated
            for stage, seconds in summary.seconds.items():
                totals[stage] = totals.get(stage, 0.0) + seconds
        print(f"tiny models, {tiles} real tiles of up to {tile_size} px")
        for stage in ("ingest", "caption", "categories", "detect", "segment", "merge", "domain", "write"):
            print(f"  {stage:<11} {1000 * totals.get(stage, 0.0) / tiles:8.1f} ms/tile")


def run_real_size(n_tiles: int = 2) -> None:
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    from pipeline.merge import InstanceMask, merge_instances
    from pipeline.models.segmenter import SAM_PRESETS, build_segment_anything
    from pipeline.outputs import overlay, write_png

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8) for _ in range(n_tiles)]
    detector = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    sam = build_segment_anything(SAM_PRESETS["vit_b"]).eval()
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in images:
            detector(pixel_values=torch.rand(1, 3, 800, 800), input_ids=torch.randint(1000, 2000, (1, 24)))
        detect = (time.perf_counter() - started) / n_tiles
        started = time.perf_counter()
        for image in images:
            sam.image_encoder(sam.preprocess(torch.as_tensor(image).permute(2, 0, 1)[None].float()))
        segment = (time.perf_counter() - started) / n_tiles
    taxonomy = load_taxonomy("ovrsis95k")
    valid = np.ones((1024, 1024), bool)
    masks = [InstanceMask("building", rng.random((1024, 1024)) > 0.7, 0.8, 0.9, [0, 0, 10, 10]) for _ in range(20)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for i, image in enumerate(images):
            semantic, _, _ = merge_instances(masks, taxonomy, valid)
            write_png(Path(work) / f"{i}.png", semantic)
            write_png(Path(work) / f"{i}-overlay.png", overlay(image, semantic, len(taxonomy)))
    merge_write = (time.perf_counter() - started) / n_tiles
    print(f"real-size models (random weights), 1024 px tiles, CPU, {torch.get_num_threads()} threads")
    print(f"  detect (GroundingDINO default arch, 800 px)  {detect:7.2f} s/tile")
    print(f"  segment (SAM ViT-B image embedding)          {segment:7.2f} s/tile")
    print(f"  merge (20 instances) + write mask + overlay  {merge_write:7.2f} s/tile")
    print(f"  non-model share: {merge_write / (detect + segment):.1%} of model time (captioner not counted, which only lowers it)")


def _tiny(folder: Path) -> Path:
    from pipeline.models.tiny import make_tiny_models

    return make_tiny_models(folder / "tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--real-size", action="store_true", help="also time real-size detector and segmenter")
    args = parser.parse_args()
    run_tiny(args.tile_size)
    if args.real_size:
        run_real_size()


if __name__ == "__main__":
    main()
