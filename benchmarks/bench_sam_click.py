"""Milliseconds per smart-tool click of the review backend, with a real-size SAM ViT-B (random weights).

What a reviewer waits for: Label Studio's /predict with one task and the smart tool's regions,
answered by `ReviewBackend.click` (read the tile, embedding from the cache, prompt encoder + mask
decoder, brush RLE). The first click on a tile also runs the image encoder (and stores the
embedding on disk); later clicks do not; a backend restarted later reads the embedding from disk.
Weights are random (nothing is downloaded): the timing is the architecture's, the masks are noise.
Usage: python benchmarks/bench_sam_click.py [--backend segment-anything|transformers|both] [--size 512] [--clicks 20]
                                           [--tiny] [--smoke]
(--tiny: the tiny model set's SAMs instead of ViT-B; --smoke: those, both backends, a 64x64 tile, 2 clicks.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _shared import parse_args
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from audit.backend import BackendConfig, ReviewBackend
from audit.interactive import SegmentAnythingInteractive, TransformersInteractive
from taxonomy import load_taxonomy


def random_sam(backend: str, tiny: bool):
    """ViT-B SAM with random weights: the official architecture, or transformers' SamConfig defaults (= ViT-B);
    tiny: the tiny model set's SAM of that backend (on 256 px), which checks this script in seconds."""
    from pipeline.models.tiny import TINY_SAM_ARCH, sam_config

    torch.manual_seed(0)
    key = f"bench-{'tiny' if tiny else 'vit-b'}"
    if backend == "segment-anything":
        from pipeline.models.segmenter import SAM_PRESETS, build_segment_anything

        model = build_segment_anything(TINY_SAM_ARCH if tiny else SAM_PRESETS["vit_b"])
        return SegmentAnythingInteractive(model, f"{key}-sa")
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    if tiny:  # as pipeline.models.tiny saves it
        processor = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
        return TransformersInteractive(SamModel(sam_config()), SamProcessor(processor), f"{key}-hf")
    return TransformersInteractive(SamModel(SamConfig()), SamProcessor(SamImageProcessor()), f"{key}-hf")


class TimedDecode:
    """The SAM with its `decode` timed: a click's time minus this is reading, caching and the brush RLE."""

    def __init__(self, sam) -> None:
        self.sam, self.model_key, self.times = sam, sam.model_key, []

    def embed(self, image):
        return self.sam.embed(image)

    def decode(self, *args):
        start = time.perf_counter()
        try:
            return self.sam.decode(*args)
        finally:
            self.times.append((time.perf_counter() - start) * 1000)


def smart_regions(step: int, rng: np.random.Generator) -> list[dict]:
    """Alternately one click, two clicks (one on the background), one box: as a reviewer works."""

    def point(positive: bool) -> dict:
        return {
            "type": "keypointlabels",
            "is_positive": positive,
            "value": {"x": float(rng.uniform(5, 95)), "y": float(rng.uniform(5, 95)), "keypointlabels": ["building"]},
        }

    box = {
        "type": "rectanglelabels",
        "value": {"x": 20.0, "y": 25.0, "width": 40.0, "height": 30.0, "rectanglelabels": ["building"]},
    }
    return [[point(True)], [point(True), point(False)], [box]][step % 3]


def run(backend_name: str, size: int, clicks: int, tiny: bool, folder: Path) -> None:
    started = time.perf_counter()
    sam = TimedDecode(random_sam(backend_name, tiny))
    built = time.perf_counter() - started
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / "tile.png")
    task = {"id": 1, "data": {"image": "/data/local-files/?d=tile.png", "key": "tile"}}
    config = BackendConfig(root=folder, cache=folder / f"embeddings-{backend_name}")
    backend = ReviewBackend(config, load_taxonomy("ovrsis95k"), sam=sam)

    def click(service: ReviewBackend, step: int) -> float:
        start = time.perf_counter()
        answer = service.predict({"tasks": [task], "params": {"context": {"result": smart_regions(step, rng)}}})
        assert answer["results"][0]["result"][0]["value"]["format"] == "rle"
        return (time.perf_counter() - start) * 1000

    first = click(backend, 0)
    later = [click(backend, step) for step in range(1, clicks + 1)]
    restarted = ReviewBackend(config, load_taxonomy("ovrsis95k"), sam=sam)  # a fresh process: the embedding from disk
    after_restart = click(restarted, 0)
    assert backend.embeddings.computed == 1 and restarted.embeddings.computed == 0
    decoder = sorted(sam.times[1 : clicks + 1])
    later.sort()
    print(
        f"{backend_name} {'tiny SAM' if tiny else 'ViT-B'} (random weights, built in {built:.1f} s), "
        f"{size}x{size} tile, {torch.get_num_threads()} torch threads:"
    )
    print(f"  first click (image encoder + decoder): {first:8.0f} ms")
    print(
        f"  later clicks, n={clicks}: median {statistics.median(later):6.0f} ms, "
        f"p90 {later[int(0.9 * (len(later) - 1))]:6.0f} ms, max {later[-1]:6.0f} ms"
    )
    print(
        f"    of which the mask decoder: median {statistics.median(decoder):6.0f} ms "
        "(the rest is mostly label_studio_sdk's pure-Python brush RLE: random weights give speckled masks, "
        "far more runs than a real SAM mask)"
    )
    disc = np.hypot(*np.mgrid[:size, :size] - size / 2) < size / 4  # a real SAM mask is a few smooth blobs
    start = time.perf_counter()
    mask2rle((disc * 255).astype(np.uint8))
    smooth = (time.perf_counter() - start) * 1000
    print(
        f"    brush RLE of a smooth {size}x{size} mask instead: {smooth:.0f} ms "
        f"(decoder + that RLE: {statistics.median(decoder) + smooth:.0f} ms)"
    )
    print(f"  first click after a restart (embedding read from disk): {after_restart:6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["segment-anything", "transformers", "both"], default="both")
    parser.add_argument("--size", type=int, default=512, help="tile side in pixels")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="the tiny model set's SAMs (checks the script on a CPU)")
    args = parse_args(parser, backend="both", size=64, clicks=2, tiny=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in ["segment-anything", "transformers"] if args.backend == "both" else [args.backend]:
            run(name, args.size, args.clicks, args.tiny, Path(folder))


if __name__ == "__main__":
    main()
