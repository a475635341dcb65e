"""One audit round (issue 33, item 1): Pi-Seg trained on the reviewed tiles ranks the next queue.

    reviewed tiles (records.jsonl after a build applied the ledger) -> shards of their reviewed masks
    -> `piseg train` on them (from the previous round's model, when there is one)
    -> its prediction and class probabilities on every unreviewed tile with a proposal
    -> ranking signals (audit/ranking.py) -> the queue, in order -> optionally pushed to Label Studio

Everything a round did is in OUT/audit/rounds/NNN/: `data/` (its shards and manifest), `piseg/` (the
run: checkpoints, log.jsonl), `predictions/` (the model's masks of the queued tiles, which a push shows
beside the proposal where they disagree), `round.json` (the signal, the checkpoint and the one it started from, the
reviewed tiles it trained on, every scored tile's signals, the queue in order). Plain functions: `ovrsis
audit round` calls them, and so can a Prefect flow. Here, not in audit/, because only the ML backend of
the audit may import piseg (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from audit import ranking
from audit.ledger import read_queued
from audit.queue import load_live_records
from ovrsis.errors import AuditError, OvrsisError
from pipeline.dataset.records import TileRecord
from pipeline.dataset.tile_table import proposed_pixels
from pipeline.files.layout import audit_dir, manifest_file
from pipeline.files.safe_names import confined_path
from pipeline.raster.outputs import write_png
from pipeline.raster.tiling import BandRule
from taxonomy.loader import Taxonomy, load_taxonomy

ROUNDS = "rounds"
RANKING_SIGNALS = ("combined", "disagreement", "uncertainty", "low_confidence", "random")


@dataclass
class RoundResult:
    number: int
    folder: Path
    checkpoint: Path
    trained_on: int  # reviewed tiles
    queue: list[str]  # tile keys, the first to review first
    scores: dict[str, dict[str, float]]  # key -> signal -> score


def rounds_dir(out: Path) -> Path:
    return audit_dir(out) / ROUNDS


def run_round(
    out: Path,
    signal: str = "combined",
    count: int = 50,
    iters: int = 2000,
    backbone: str = "vit-b",
    seed: int = 0,
    notice: Callable[[str], None] = lambda line: None,
) -> RoundResult:
    """Train on the reviewed tiles, score the unreviewed ones, and write OUT/audit/rounds/NNN/."""
    from piseg.config import load_config
    from piseg.training.train import train

    if signal not in RANKING_SIGNALS:
        raise AuditError(f"unknown ranking signal {signal!r}; one of {', '.join(RANKING_SIGNALS)}")
    records = load_live_records(out)
    reviewed = [r for r in records if r.review is not None and r.semantic_mask]
    queued = {q.key for q in read_queued(out)}  # a tile with an open task in any queue is not queued twice:
    # the random sample must stay the random sample, whatever a round ranks
    candidates = [r for r in records if r.review is None and proposed_pixels(r) and r.key not in queued]
    if not reviewed:
        raise AuditError(f"{out}: no reviewed tile to train on; push a sample, review it, pull and rebuild first")
    if not candidates:
        raise AuditError(f"{out}: every tile with a proposal is reviewed or queued; nothing to rank")
    manifest = json.loads(manifest_file(out).read_text())
    taxonomy = build_taxonomy(manifest, records)
    done = sorted((int(p.name), p) for p in rounds_dir(out).glob("[0-9]*") if p.name.isdigit())
    earlier = [p for _, p in done if (p / "round.json").is_file()]
    number = done[-1][0] + 1 if done else 1  # never a number used before, even if an older round was removed
    folder = rounds_dir(out) / f"{number:03d}"
    folder.mkdir(parents=True, exist_ok=False)  # two rounds at once never share a folder
    # the previous round's model, found by its place in the previous round's folder (never a path read
    # from a file: round.json only reports it)
    init = earlier[-1] / "piseg" / "checkpoints" / "final.pt" if earlier else None
    if init is not None and not init.is_file():
        raise AuditError(f"{init}: the previous round's model is missing; remove {earlier[-1]} to redo that round")
    notice(f"round {number}: training on {len(reviewed)} reviewed tile(s)" + (f", from {init}" if init else ""))
    _write_reviewed_shards(out, folder / "data", reviewed, taxonomy, manifest)
    config = load_config(None, backbone, {"train": {"iters": iters, "seed": seed}})
    if config.train.batch_size > len(reviewed):  # an early round: a batch is every reviewed tile
        config = load_config(None, backbone, {"train": {"iters": iters, "seed": seed, "batch_size": len(reviewed)}})
    checkpoint = train(folder / "data", config, folder / "piseg", init=init)
    notice(f"round {number}: scoring {len(candidates)} unreviewed tile(s) by {signal}")
    model = _RoundModel(checkpoint, taxonomy, manifest)
    scores = _score(out, model, candidates, seed)
    chosen = {key: values[signal] for key, values in scores.items()}
    queue = ranking.queue_order(chosen, count)
    by_key = {r.key: r for r in candidates}
    _save_predictions(folder / "predictions", model, [by_key[k] for k in queue])
    (folder / "round.json").write_text(
        json.dumps(
            {
                "number": number,
                "signal": signal,
                "checkpoint": str(checkpoint),
                "init": str(init) if init else None,
                "trained_on": sorted(r.key for r in reviewed),
                "scores": scores,
                "queue": queue,
            },
            indent=2,
            sort_keys=True,
        )
    )
    return RoundResult(number, folder, checkpoint, len(reviewed), queue, scores)


def _write_reviewed_shards(out: Path, dest: Path, reviewed: list[TileRecord], taxonomy: Taxonomy, manifest: dict):
    """The reviewed tiles as shards (their reviewed masks, read back from OUT/masks/), every one for training."""
    from pipeline.build.annotate import RasterPixels
    from pipeline.dataset.shards import ShardConfig, write_shards

    pixels = RasterPixels(_bands(manifest))

    def load(record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
        return pixels(record)[0], np.asarray(Image.open(out / record.semantic_mask))

    write_shards(dest, reviewed, load, taxonomy.names, taxonomy.version, ShardConfig(val_fraction=0.0))


class _RoundModel:
    """The round's Pi-Seg over the build's tiles: class probabilities (classes, H, W) by its inference scheme."""

    def __init__(self, checkpoint: Path, taxonomy: Taxonomy, manifest: dict) -> None:
        from pipeline.build.annotate import RasterPixels
        from piseg.inference.predict import Predictor

        self.pixels, self.predictor = RasterPixels(_bands(manifest)), Predictor(checkpoint)
        self.text = self.predictor.class_embeddings(taxonomy.names)

    def probabilities(self, record: TileRecord) -> np.ndarray:
        import torch

        from piseg.inference.scheme import class_probabilities

        image = self.pixels(record)[0]
        with torch.no_grad():
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(self.predictor.device)
            output = class_probabilities(self.predictor.model, tensor, self.text, self.predictor.settings)
        return output.float().cpu().numpy()


def _score(out: Path, model: _RoundModel, candidates: list[TileRecord], seed: int) -> dict[str, dict[str, float]]:
    """Every ranking signal for every candidate tile (the model's prediction against its proposal)."""
    disagreement, uncertainty, confidence = {}, {}, {}
    for record in candidates:
        probabilities = model.probabilities(record)
        proposal = np.asarray(Image.open(out / record.semantic_mask))
        disagreement[record.key] = ranking.disagreement(probabilities.argmax(0).astype(np.uint8), proposal)
        # per-class sigmoids (Pi-Seg scores each class on its own), normalised over the classes
        uncertainty[record.key] = ranking.uncertainty(probabilities / probabilities.sum(0, keepdims=True).clip(1e-12))
        kept = [i for i in record.instances if not i.dropped]
        confidence[record.key] = ranking.low_confidence(
            [i.detector_score * (1.0 if i.mask_score is None else i.mask_score) for i in kept]
        )
    keys = [r.key for r in candidates]
    signals = {
        "disagreement": disagreement,
        "uncertainty": uncertainty,
        "low_confidence": confidence,
        "random": ranking.random_scores(keys, seed),
        "combined": ranking.combined(disagreement, confidence),
    }
    return {key: {name: float(values[key]) for name, values in signals.items()} for key in keys}


def _save_predictions(folder: Path, model: _RoundModel, records: list[TileRecord]) -> None:
    """The model's masks of the queued tiles (predictions/KEY.png): what a push shows beside the proposal."""
    for record in records:
        mask = model.probabilities(record).argmax(0).astype(np.uint8)
        write_png(confined_path(folder, f"{record.key}.png", "tile key"), mask)


def second_opinions(out: Path, round_folder: Path, floor: float) -> dict[str, tuple[str, np.ndarray]]:
    """For each queued tile whose prediction disagrees with its proposal by at least FLOOR (1 - IoU), the
    round model's mask and the label Label Studio shows it under (never mistaken for the build's proposal)."""
    summary = json.loads((round_folder / "round.json").read_text())
    opinions = {}
    for key in summary["queue"]:
        disagreement = summary["scores"][key]["disagreement"]
        if disagreement >= floor:
            mask = np.asarray(Image.open(confined_path(round_folder / "predictions", f"{key}.png", "tile key")))
            label = f"pi-seg round {summary['number']}: disagrees with the proposal (IoU {1 - disagreement:.2f})"
            opinions[key] = (label, mask)
    return opinions


def _bands(manifest: dict) -> BandRule:
    """The build's band rule (its tiling section), so tiles are read as the build read them."""
    tiling = (manifest.get("build_config") or {}).get("tiling") or {}
    return BandRule(
        bands=tuple(tiling["bands"]) if tiling.get("bands") else None, stretch=tiling.get("stretch", "auto")
    )


def build_taxonomy(manifest: dict, records: list[TileRecord]) -> Taxonomy:
    """The taxonomy the build used, checked by its version against the manifest: the manifest's
    configuration names it (a bundled name, or a path made relative to the build's inputs), the records
    by name. A file edited since the build has another version and is refused: its values would mean
    other classes."""
    version = manifest["taxonomy"]["version"]
    named = [(manifest.get("build_config") or {}).get("taxonomy")]
    named += [r.provenance.get("taxonomy", {}).get("name") for r in records[:1]]
    for name in (n for n in named if isinstance(n, str)):
        try:
            taxonomy = load_taxonomy(name)
        except (OvrsisError, OSError):
            continue
        if taxonomy.version == version:
            return taxonomy
    raise AuditError(
        f"cannot find the taxonomy the build used (version {version}, named {', '.join(map(str, named))}); "
        "run from the folder its path is relative to, or restore the file as it was"
    )
