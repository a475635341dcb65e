"""The dataset build's GPU check (issue 14, item 5), one command within 8 minutes.

1. Each model stage at real size with random weights (built from the released configurations,
   nothing downloaded): Florence-2-large captioning (96 new tokens), GroundingDINO-base detection,
   SAM ViT-B and ViT-H box prompting (image embedding + 20 boxes), at batch 1, 8 and 16 tiles and at
   float32 and bfloat16 (autocast, as a models YAML's `precision` runs a stage: pipeline/models/stage_run.py):
   tiles/s and peak GPU memory. The sizes come from benchmarks/bench_annotate.py (REAL_SIZE).
2. The whole build flow against the plain stage functions over generated imagery
   (benchmarks/bench_flow_overhead.py, tiny models on this device): the orchestration share
   of the flow's time.

Each part is skipped with a note once the time budget is spent, so the script always prints.
Usage: python benchmarks/gpu_check_build.py [--budget-s 480] [--batches 1 8 16] [--precisions float32 bfloat16]
                                           [--out gpu_check_build.json] [--tiny] [--smoke]
(`--tiny` builds small configurations instead, so the script itself can be checked on a CPU; --smoke: those at
batch 1, the flow part by `bench_flow_overhead.py --smoke`, no file written.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _shared import parse_args
from bench_annotate import REAL_SIZE

from pipeline.models.stage_run import DTYPES

HERE = Path(__file__).resolve().parent

MODELS = ("florence-2-large", "grounding-dino-base", "sam-vit-b", "sam-vit-h")
SAM_VIT_H = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "global_attn_indexes": [7, 15, 23, 31],
}


def build(name: str, tiny: bool, device: str):
    """(model, run(batch)) for one model stage, with the inputs a 1024 px tile gives its processor."""
    import transformers as t

    if name == "florence-2-large":
        sizes = REAL_SIZE["florence-community/Florence-2-large"]
        vision = {"depths": [1, 1, 9, 1], "window_size": 12, **sizes["vision"]}
        text = {"vocab_size": 51290, "max_position_embeddings": 1024, **sizes["text"]}
        if tiny:
            vision = {
                "depths": [1, 1, 1, 1],
                "window_size": 12,
                "embed_dim": [16, 32, 64, 128],
                "num_heads": [1, 2, 4, 8],
                "num_groups": [1, 2, 4, 8],
                "projection_dim": 64,
            }
            text = {
                "vocab_size": 51290,
                "max_position_embeddings": 1024,
                "d_model": 64,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "encoder_attention_heads": 2,
                "decoder_attention_heads": 2,
                "encoder_ffn_dim": 128,
                "decoder_ffn_dim": 128,
            }
        config = t.Florence2Config(vision_config=vision, text_config=text)
        model = t.Florence2ForConditionalGeneration(config).to(device).eval()
        size, tokens = (768, 577) if not tiny else (224, 50)

        def run(batch: int) -> None:
            ids = torch.cat(
                [torch.full((batch, tokens), config.image_token_id), torch.randint(100, 50000, (batch, 14))], dim=1
            )
            model.generate(
                input_ids=ids.to(device),
                pixel_values=torch.rand(batch, 3, size, size, device=device),
                max_new_tokens=96 if not tiny else 4,
                min_new_tokens=96 if not tiny else 4,
                num_beams=1,
            )

        return model, run
    if name == "grounding-dino-base":
        config = (
            t.GroundingDinoConfig(backbone_config=REAL_SIZE["swin-b"])
            if not tiny
            else t.GroundingDinoConfig(
                backbone_config={
                    "model_type": "swin",
                    "embed_dim": 8,
                    "depths": [1] * 4,
                    "num_heads": [1] * 4,
                    "out_features": ["stage2", "stage3", "stage4"],
                    "out_indices": [2, 3, 4],
                },
                d_model=32,
                encoder_layers=1,
                decoder_layers=2,
                num_queries=10,
                encoder_n_points=2,
                decoder_n_points=2,
                text_config={
                    "hidden_size": 8,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 1,
                    "intermediate_size": 16,
                },
            )
        )
        model = t.GroundingDinoForObjectDetection(config).to(device).eval()
        size = 800 if not tiny else 128

        def run(batch: int) -> None:
            model(
                pixel_values=torch.rand(batch, 3, size, size, device=device),
                input_ids=torch.randint(1000, 2000, (batch, 24), device=device),
            )

        return model, run
    config = t.SamConfig(vision_config=SAM_VIT_H if name == "sam-vit-h" else {})
    if tiny:  # the test suite's tiny SAM
        from pipeline.models.tiny import sam_config

        config = sam_config()
    model = t.SamModel(config).to(device).eval()
    size = 1024 if not tiny else 256

    def run(batch: int) -> None:
        boxes = torch.rand(batch, 20, 2, device=device).repeat(1, 1, 2) * (size * 0.5)
        boxes[..., 2:] += size * 0.1
        embeddings = model.get_image_embeddings(torch.rand(batch, 3, size, size, device=device))
        model(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False)

    return model, run


def time_stage(
    name: str, batches: list[int], precisions: list[str], tiny: bool, device: str, deadline: float
) -> list[dict]:
    model, run = build(name, tiny, device)
    rows = []
    for precision, batch in ((p, b) for p in precisions for b in batches):
        autocast = torch.autocast(device, dtype=DTYPES[precision]) if precision in DTYPES else nullcontext()
        with torch.inference_mode(), autocast:
            if time.monotonic() > deadline:
                rows.append({"model": name, "precision": precision, "batch": batch, "skipped": "time budget spent"})
                continue
            try:
                run(batch)  # warm-up: kernels, allocator
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                run(batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "batch": batch,
                        "tiles_per_s": round(batch / seconds, 2),
                        "peak_gib": peak and round(peak, 2),
                    }
                )
            except torch.OutOfMemoryError:
                rows.append({"model": name, "precision": precision, "batch": batch, "skipped": "out of GPU memory"})
                torch.cuda.empty_cache()
            print(rows[-1], flush=True)
    params = sum(p.numel() for p in model.parameters())
    for row in rows:
        row["params_m"] = round(params / 1e6, 1)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def flow_share(flow_args: list[str], deadline: float) -> dict:
    """bench_flow_overhead.py (with `flow_args`) on this device: flow and plain seconds, orchestration
    share of the flow."""
    remaining = deadline - time.monotonic()
    if remaining < 60:
        return {"skipped": "time budget spent"}
    try:
        result = subprocess.run(
            [sys.executable, str(HERE / "bench_flow_overhead.py"), *flow_args],
            capture_output=True,
            text=True,
            timeout=remaining,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": "time budget spent during the flow"}
    figures = dict(
        re.findall(r"^(tiles|plain stage functions|Prefect flow \(in-flow\))\s+([\d.]+)", result.stdout, flags=re.M)
    )
    if result.returncode or len(figures) < 3:
        return {"failed": result.stderr[-1000:]}
    plain, flow = float(figures["plain stage functions"]), float(figures["Prefect flow (in-flow)"])
    return {
        "tiles": int(figures["tiles"]),
        "plain_s": plain,
        "flow_s": flow,
        "orchestration_share": round((flow - plain) / flow, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--precisions", nargs="+", choices=["float32", *DTYPES], default=["float32", "bfloat16"])
    parser.add_argument("--rasters", type=int, default=20, help="rasters of 100 tiles for the flow part")
    parser.add_argument("--tiny", action="store_true", help="small configurations (checks the script on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_build.json"))
    args = parse_args(parser, batches=[1], precisions=["float32", "bfloat16"], tiny=True, out=Path(os.devnull))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU (no GPU: figures are not GPU figures)"
    deadline = time.monotonic() + args.budget_s
    report = {"device": card, "tiny": args.tiny, "stages": []}
    for name in MODELS:
        report["stages"] += time_stage(
            name, args.batches, args.precisions, args.tiny, device, deadline - 0.25 * args.budget_s
        )
    report["flow"] = flow_share(["--smoke"] if args.smoke else ["--rasters", str(args.rasters)], deadline)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"device: {card}")
    print("| model | params (M) | precision | batch | tiles/s | peak GPU memory (GiB) |\n|---|---:|---|---:|---:|---:|")
    for row in report["stages"]:
        print(
            f"| {row['model']} | {row['params_m']} | {row['precision']} | {row['batch']} | "
            f"{row.get('tiles_per_s', row.get('skipped'))} | {row.get('peak_gib') or '-'} |"
        )
    print(f"flow: {report['flow']}")
    if "failed" in report["flow"]:  # after the figures: a broken flow part must not pass for a check
        sys.exit(1)


if __name__ == "__main__":
    main()
