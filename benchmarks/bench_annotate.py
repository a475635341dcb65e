"""Per-stage time per tile of the imagery stage on real tiles, and the non-model share.

1. Tiny models on the real samples (SpaceNet panchromatic, NAIP, NEON, UC Merced) with given
   captions: seconds per tile for ingest, each stage of pipeline/stages/registry.py, and write.
2. With --real-size: every preset's captioner, detector and segmenter (pipeline/models/presets.py)
   at real size with random weights (same compute as the released weights; nothing downloaded),
   each in its own process: parameters, peak memory and tiles/s on 1024x1024 tiles, as a
   markdown table; then merge + write per tile, the non-model share of a real build.
Usage: python benchmarks/bench_annotate.py [--tile-size 512] [--inputs ...] [--real-size [--tiles N]] [--smoke]
(--smoke: part 1 on the one NEON tile, in seconds.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import SHARED_REAL, parse_args, require

from pipeline.build.annotate import AnnotateConfig, Annotator
from pipeline.build.tile_state import TileState
from pipeline.models.config import ModelSet, load_models_config
from pipeline.raster.ingest import Tile, TilingConfig
from pipeline.stages.registry import STAGE_NAMES
from taxonomy import load_taxonomy

INPUTS = ["spacenet/sample_geotiff.tif", "naip", "neon/OSBS_029.tif", "ucm_sample"]
CAPTION = "many buildings and green trees along a road with cars, near a river and some farmland"


def run_tiny(tile_size: int, inputs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as work:
        models = ModelSet(load_models_config(_tiny(Path(work))))
        taxonomy = load_taxonomy("ovrsis95k")
        totals, tiles = {}, 0
        for relative in inputs:
            source = require(SHARED_REAL / relative)
            stems = [p.stem for p in (source.glob("*.tif") if source.is_dir() else [source])]
            annotator = Annotator(
                taxonomy,
                models,
                Path(work) / "out" / relative.replace("/", "_"),
                AnnotateConfig(tiling=TilingConfig(tile_size)),
                captions={s: [CAPTION] for s in stems},
            )
            warm_up(annotator, source)
            summary = annotator.run(source)
            tiles += summary.annotated
            for stage, seconds in summary.seconds.items():
                totals[stage] = totals.get(stage, 0.0) + seconds
        print(f"tiny models, {tiles} real tiles of up to {tile_size} px")
        for stage in ("ingest", *STAGE_NAMES, "write"):
            print(f"  {stage:<11} {1000 * totals.get(stage, 0.0) / tiles:8.1f} ms/tile")


def warm_up(annotator: Annotator, source: Path) -> None:
    """The source's first tile through every stage, untimed: the model, spaCy and MiniLM loads and the
    annotator's own taxonomy embedding are start-up, not per-tile cost."""
    tile = next(t for t in annotator.tiles(source) if isinstance(t, Tile))
    annotator.run_batch([TileState(tile.record)], lambda record: (tile.image, tile.valid))
    annotator.summary.seconds.clear()  # that tile's read


def run_real_size(tiles: int) -> None:
    """Every preset's models at real size with random weights (same compute as the released ones),
    each stage in a fresh process so its peak memory is its own, on 1024 px tiles."""
    import multiprocessing

    from pipeline.models.presets import PRESETS

    context = multiprocessing.get_context("spawn")
    measured: dict[tuple[str, str], dict] = {}
    rows = []
    for preset, stages in PRESETS.items():
        for stage, spec in stages.items():
            key = (stage, spec["model"])
            if key not in measured:
                with context.Pool(1) as pool:
                    measured[key] = pool.apply(_measure_stage, (stage, spec["backend"], spec["model"], tiles))
                print(stage, spec["model"], measured[key], flush=True)  # progress: the table comes at the end
            m = measured[key]
            rows.append(
                f"| {preset} | {stage} | {spec['model'].split('/')[-1]} | {m['params'] / 1e6:,.0f} M | "
                f"{m['peak_rss'] / 2**30:.2f} GB | {m['tiles_per_s']:.3f} "
                f"({1 / m['tiles_per_s']:.1f} s/tile) | {m['cpu_s']:.1f} |"
            )
    import torch

    device = "GPU" if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"real-size models (random weights), 1024 px tiles, {device}, {tiles} timed tile(s) after one warm-up")
    print(
        "| preset | stage | model | parameters | peak memory (RSS) | tiles/s | CPU s/tile |"
        "\n|---|---|---|---:|---:|---:|---:|"
    )
    print("\n".join(rows))
    merge_write = _merge_and_write_seconds(tiles)
    print(f"merge (20 instances) + write mask + overlay: {merge_write:.2f} s/tile")


REAL_SIZE = {  # the released architectures' sizes (their config.json), built here with random weights
    "florence-community/Florence-2-large": {
        "vision": {
            "embed_dim": [256, 512, 1024, 2048],
            "num_heads": [8, 16, 32, 64],
            "num_groups": [8, 16, 32, 64],
            "projection_dim": 1024,
        },
        "text": {
            "d_model": 1024,
            "encoder_layers": 12,
            "decoder_layers": 12,
            "encoder_attention_heads": 16,
            "decoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "decoder_ffn_dim": 4096,
        },
    },
    "florence-community/Florence-2-base": {
        "vision": {
            "embed_dim": [128, 256, 512, 1024],
            "num_heads": [4, 8, 16, 32],
            "num_groups": [4, 8, 16, 32],
            "projection_dim": 768,
        },
        "text": {
            "d_model": 768,
            "encoder_layers": 6,
            "decoder_layers": 6,
            "encoder_attention_heads": 12,
            "decoder_attention_heads": 12,
            "encoder_ffn_dim": 3072,
            "decoder_ffn_dim": 3072,
        },
    },
    "swin-b": {
        "model_type": "swin",
        "embed_dim": 128,
        "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32],
        "window_size": 12,
        "image_size": 384,
        "out_features": ["stage2", "stage3", "stage4"],
        "out_indices": [2, 3, 4],
    },
    "facebook/sam2.1-hiera-small": {
        "hidden_size": 96,
        "blocks_per_stage": [1, 2, 11, 2],
        "global_attention_blocks": [7, 10, 13],
        "embed_dim_per_stage": [96, 192, 384, 768],
        "num_attention_heads_per_stage": [1, 2, 4, 8],
    },
    "facebook/sam2.1-hiera-large": {
        "hidden_size": 144,
        "num_attention_heads": 2,
        "blocks_per_stage": [2, 6, 36, 4],
        "global_attention_blocks": [23, 33, 43],
        "window_size_per_stage": [8, 4, 16, 8],
        "embed_dim_per_stage": [144, 288, 576, 1152],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
    },
}


def _measure_stage(stage: str, backend: str, model_id: str, tiles: int) -> dict:
    """Build, warm up once, then time `tiles` 1024 px tiles through the stage's model call(s)."""
    import resource

    import torch

    from pipeline.models.device import pick_device

    torch.manual_seed(0)
    device = pick_device()
    model, run = _real_size_model(stage, backend, model_id, device)
    run()
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(tiles):
        run()
    seconds, cpu_seconds = (time.perf_counter() - started) / tiles, (time.process_time() - cpu_started) / tiles
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "peak_rss": peak,
        "tiles_per_s": 1 / seconds,
        "cpu_s": cpu_seconds,
    }


def _real_size_model(stage: str, backend: str, model_id: str, device: str):
    """(model, run one tile) for a stage: the same calls the backends make, at the sizes the
    processors give a 1024 px tile (Florence-2 768 px, GroundingDINO 800 px, SAM and SAM 2 1024 px)."""
    import torch
    import transformers as t

    if stage == "captioner":
        sizes = REAL_SIZE[model_id]
        config = t.Florence2Config(
            vision_config={"depths": [1, 1, 9, 1], "window_size": 12, **sizes["vision"]},
            text_config={"vocab_size": 51290, "max_position_embeddings": 1024, **sizes["text"]},
        )
        model = t.Florence2ForConditionalGeneration(config).to(device).eval()
        image_tokens = torch.full((1, 577), config.image_token_id)  # 24 x 24 DaViT tokens + 1 at 768 px
        ids = torch.cat([image_tokens, torch.randint(100, 50000, (1, 14))], dim=1).to(device)
        pixels = torch.rand(1, 3, 768, 768, device=device)
        # min_new_tokens: random weights may stop at once; a real detailed caption runs to ~96 tokens
        return model, _no_grad(
            lambda: model.generate(
                input_ids=ids, pixel_values=pixels, max_new_tokens=96, min_new_tokens=96, num_beams=1
            )
        )
    if stage == "detector":
        swin = REAL_SIZE["swin-b"] if ("base" in model_id) else None
        config_class = t.MMGroundingDinoConfig if backend == "mm-grounding-dino" else t.GroundingDinoConfig
        config = config_class(backbone_config=swin) if swin else config_class()
        model = t.AutoModelForZeroShotObjectDetection.from_config(config).to(device).eval()
        pixels, ids = torch.rand(1, 3, 800, 800, device=device), torch.randint(1000, 2000, (1, 24), device=device)
        return model, _no_grad(lambda: model(pixel_values=pixels, input_ids=ids))
    boxes = torch.rand(1, 20, 2, device=device).repeat(1, 1, 2) * torch.tensor([400, 400, 600, 600], device=device)
    boxes[..., 2:] += 100
    pixels = torch.rand(1, 3, 1024, 1024, device=device)
    if backend == "sam":
        model = t.SamModel(t.SamConfig()).to(device).eval()  # SamConfig() is ViT-B
        return model, _no_grad(
            lambda: model(
                image_embeddings=model.get_image_embeddings(pixels), input_boxes=boxes, multimask_output=False
            )
        )
    hiera = {"model_type": "sam2_hiera_det_model", **REAL_SIZE[model_id]}
    channels = list(reversed(hiera["embed_dim_per_stage"]))
    model = (
        t.Sam2Model(t.Sam2Config(vision_config={"backbone_config": hiera, "backbone_channel_list": channels}))
        .to(device)
        .eval()
    )
    return model, _no_grad(
        lambda: model(image_embeddings=model.get_image_embeddings(pixels), input_boxes=boxes, multimask_output=False)
    )


def _no_grad(call):
    import torch

    def run():
        with torch.inference_mode():
            call()

    return run


def _merge_and_write_seconds(tiles: int) -> float:
    from pipeline.raster.outputs import overlay, write_png
    from pipeline.stages.merge import InstanceMask, merge_instances

    rng = np.random.default_rng(0)
    taxonomy = load_taxonomy("ovrsis95k")
    valid = np.ones((1024, 1024), bool)
    masks = [InstanceMask("building", rng.random((1024, 1024)) > 0.7, 0.8, 0.9, [0, 0, 10, 10]) for _ in range(20)]
    images = [rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8) for _ in range(tiles)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for i, image in enumerate(images):
            semantic, _, _ = merge_instances(masks, taxonomy, valid)
            write_png(Path(work) / f"{i}.png", semantic)
            write_png(Path(work) / f"{i}-overlay.png", overlay(image, semantic, len(taxonomy)))
    return (time.perf_counter() - started) / tiles


def _tiny(folder: Path) -> Path:
    from pipeline.models.tiny import make_tiny_models

    return make_tiny_models(folder / "tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--inputs", nargs="+", default=INPUTS, help="real samples, relative to ../shared/data/real")
    parser.add_argument("--real-size", action="store_true", help="time every preset's models at real size instead")
    parser.add_argument("--tiles", type=int, default=1, help="timed tiles per stage at real size (after one warm-up)")
    args = parse_args(parser, inputs=["neon/OSBS_029.tif"], real_size=False)  # 400x400 px: one tile
    if args.real_size:
        run_real_size(args.tiles)
    else:
        run_tiny(args.tile_size, args.inputs)


if __name__ == "__main__":
    main()
