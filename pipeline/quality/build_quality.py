"""How good is the semi-automatic build? Its auto-annotations scored against a labelled dataset of the
same imagery: per-tile category precision and recall, and mask mIoU, before and after the human audit.

The two vocabularies are compared on their shared classes: each ground-truth class is mapped to the build
taxonomy by name or synonym (taxonomy.crosswalk); ground-truth classes without a counterpart are ignored,
and build proposals outside the shared classes are not judged (nothing says whether they are right).
Unlabelled build pixels count as misses.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window as RioWindow

from pipeline.dataset.records import TileRecord, read_records
from pipeline.files.layout import records_file
from pipeline.quality.confusion import Confusion
from pipeline.raster.gdal_env import unlisted
from taxonomy.crosswalk import crosswalk
from taxonomy.loader import Category, Taxonomy
from taxonomy.masks import IGNORE_INDEX as IGNORE
from taxonomy.matcher import Lemmatize

MASK_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass
class CategoryCounts:
    proposed: int = 0
    true: int = 0
    hits: int = 0
    precisions: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)

    def add(self, proposed: set[str], true: set[str]) -> None:
        hits = len(proposed & true)
        self.proposed, self.true, self.hits = self.proposed + len(proposed), self.true + len(true), self.hits + hits
        if proposed:
            self.precisions.append(hits / len(proposed))
        if true:
            self.recalls.append(hits / len(true))

    def summary(self) -> dict[str, float | None]:
        mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
        return {
            "precision": self.hits / self.proposed if self.proposed else None,
            "recall": self.hits / self.true if self.true else None,
            "per_tile_precision": mean(self.precisions),
            "per_tile_recall": mean(self.recalls),
        }


def mask_summary(confusion: Confusion, names: list[str]) -> dict:
    """mIoU over the classes present in the ground truth (the "exclude" rule), pixel accuracy, and the IoU of
    each named class (None when it is absent from the ground truth)."""
    scores = confusion.scores("exclude")
    return {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy, "iou": dict(zip(names, scores.iou))}


def percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def proposed_before_audit(record: TileRecord) -> set[str]:
    """The categories as the pipeline proposed them: review-added ones removed, discarded and renamed
    ones restored (audit.apply rewrites `record.categories`, keeping the decisions)."""
    names = {c.name for c in record.categories if c.method != "audit"}
    for decision in record.audit:
        kind, _, name = decision.target.partition(":")
        if kind != "category":
            continue
        if decision.state == "discarded" or (
            decision.state == "corrected" and decision.corrected_to not in (None, name)
        ):
            names.add(name)
        if decision.state == "corrected" and decision.corrected_to not in (None, name):
            names.discard(decision.corrected_to)
    return names


def ground_truth_window(root: Path, record: TileRecord) -> np.ndarray | None:
    """The labelled mask under the tile: ROOT/SOURCE_STEM.{png,tif,tiff} read at the tile's window."""
    stem = Path(record.source.path).stem
    for suffix in MASK_SUFFIXES:
        path = root / f"{stem}{suffix}"
        if path.is_file():
            window = record.source.window
            with warnings.catch_warnings():  # plain PNG masks carry no georeference, which is fine here
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with unlisted(), rasterio.open(path) as source:
                    return source.read(1, window=RioWindow(window.col_off, window.row_off, window.width, window.height))
    return None


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def evaluate_build(
    out: Path, truth_root: Path, truth: Taxonomy, build: Taxonomy, lemmatize: Lemmatize, min_fraction: float = 0.001
) -> dict:
    """Scores of the build in OUT (records.jsonl + masks/) against masks under `truth_root`. A class is
    "in" a tile's ground truth when it covers at least `min_fraction` of the tile's labelled pixels."""
    build_names = build.names
    mapping = crosswalk(truth, build, lemmatize)
    shared = sorted({target for target in mapping.values() if target is not None}, key=build_names.index)
    other = len(shared)  # every build pixel outside the shared classes, and unlabelled ones
    truth_lookup = np.full(256, IGNORE, dtype=np.uint8)
    for index, name in enumerate(truth.names):
        if mapping[name] is not None:
            truth_lookup[index] = shared.index(mapping[name])
    build_lookup = np.full(256, other, dtype=np.uint8)
    for name in shared:
        build_lookup[build_names.index(name)] = shared.index(name)
    stages = {
        "before_audit": (Confusion(other + 1), CategoryCounts()),
        "after_audit": (Confusion(other + 1), CategoryCounts()),
    }
    records = read_records(records_file(out))
    tiles, without_truth, audited = 0, [], 0
    for record in records:
        if record.quarantine is not None or record.semantic_mask is None:
            continue
        labelled = ground_truth_window(truth_root, record)
        if labelled is None:
            without_truth.append(record.key)
            continue
        tiles += 1
        audited += bool(record.audit)
        target = truth_lookup[labelled]
        valid = target != IGNORE
        counts = np.bincount(target[valid], minlength=other + 1)[:other]
        present = {shared[i] for i, count in enumerate(counts) if valid.sum() and count / valid.sum() >= min_fraction}
        final_mask = out / record.semantic_mask
        proposal = final_mask.with_name(final_mask.stem + ".proposed.png")
        for stage, mask_path, proposed in (
            ("before_audit", proposal if proposal.is_file() else final_mask, proposed_before_audit(record)),
            ("after_audit", final_mask, {c.name for c in record.categories}),
        ):
            matrix, categories = stages[stage]
            prediction = build_lookup[read_mask(mask_path)]
            matrix.update(prediction, np.where(valid, target, IGNORE))
            categories.add(proposed & set(shared), present)
    result = {
        "records": str(records_file(out)),
        "ground_truth": str(truth_root),
        "truth_taxonomy": truth.name,
        "mapping": mapping,
        "shared_classes": shared,
        "tiles": tiles,
        "audited_tiles": audited,
        "tiles_without_ground_truth": without_truth,
        "min_fraction": min_fraction,
    }
    for stage, (matrix, categories) in stages.items():
        result[stage] = {"categories": categories.summary(), **mask_summary(matrix, shared)}
    return result


def names_taxonomy(names: list[str]) -> Taxonomy:
    """A vocabulary of bare names (no synonyms), for builds whose manifest names no bundled taxonomy."""
    return Taxonomy(
        name="build",
        categories=tuple(Category(index=i, name=n) for i, n in enumerate(names)),
        source="the build's manifest",
    )


def write_build_quality(result: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Build quality against {result['ground_truth']} ({result['truth_taxonomy']})",
        "",
        f"{result['tiles']} tiles scored ({result['audited_tiles']} audited); "
        f"{len(result['tiles_without_ground_truth'])} without ground truth. "
        f"Shared classes: {', '.join(result['shared_classes'])}.",
        "Mask mIoU over the shared classes present in the ground truth; unlabelled build pixels count as misses. "
        "Category precision/recall judge only proposals among the shared classes.",
        "",
        "| | category precision | category recall "
        "| per-tile precision | per-tile recall | mask mIoU | pixel accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in ("before_audit", "after_audit"):
        c, s = result[stage]["categories"], result[stage]
        lines.append(
            f"| {stage.replace('_', ' ')} | {percent(c['precision'])} | {percent(c['recall'])} | "
            f"{percent(c['per_tile_precision'])} | "
            f"{percent(c['per_tile_recall'])} | {percent(s['miou'])} | {percent(s['pixel_accuracy'])} |"
        )
    lines += ["", "| ground-truth class | build class |", "|---|---|"] + [
        f"| {k} | {v or '(not in the build taxonomy)'} |" for k, v in result["mapping"].items()
    ]
    path = folder / "build_quality.md"
    path.write_text("\n".join(lines) + "\n")
    return path
