"""Open-vocabulary prediction with a trained checkpoint: any class names, any image the ingest stage can
read (JPEG/PNG, GeoTIFF of any band count and dtype, via the same band rule as the build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.dataset.records import Window
from pipeline.raster.ingest import RasterSource, plan_windows
from pipeline.raster.outputs import overlay, palette, write_mask_geotiff, write_png
from pipeline.raster.stitch import stitch_to_geotiff
from piseg.checkpoint import load_model
from piseg.config import EvalConfig
from piseg.figures import LegendEntry, class_legend, compose
from piseg.inference.scheme import predict_mask
from taxonomy.masks import IGNORE_INDEX as IGNORE

MAX_CLASSES = IGNORE  # masks are uint8 with 255 = unlabelled, so class ids run 0-254
# What one bad input raises: unreadable or truncated rasters (IngestError is a ValueError), files that
# cannot be written, and the model running out of memory on a huge image (a RuntimeError).
PREDICT_FAULTS = (ValueError, OSError, RuntimeError)


def parse_class_names(text: str) -> list[str]:
    """'building, road; water' -> names split on ';' when present, else on ','. Semicolons let a name
    keep its comma synonyms ("vehicle, car; road")."""
    parts = text.split(";") if ";" in text else text.split(",")
    names = [part.strip() for part in parts if part.strip()]
    if not names:
        raise ValueError("no class names given")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    check_class_count(names)
    return names


def check_class_count(names: list[str]) -> None:
    """Refuse, before any work, more classes than a uint8 mask can hold next to the ignore value."""
    if len(names) > MAX_CLASSES:
        raise ValueError(
            f"{len(names)} class names given; masks are 8-bit (255 = unlabelled), so at most {MAX_CLASSES}"
        )


def read_image(path: Path) -> tuple[np.ndarray, str | None, list[float] | None]:
    """(H, W, 3) uint8 of a whole raster through the build's band rule (stretch, band choice, nodata → 0),
    with its CRS (WKT) and affine transform when it is georeferenced."""
    with RasterSource(path) as source:
        dataset = source.dataset
        image, _ = source.read(Window(row_off=0, col_off=0, height=dataset.height, width=dataset.width))
        if not source.georeferenced:
            return image, None, None
        return image, dataset.crs.to_wkt(), list(dataset.transform)[:6]


def overlay_legend(mask: np.ndarray, class_names: list[str]) -> list[LegendEntry]:
    """The classes present in a predicted MASK, in id order, each with the share of the image it covers."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    present = np.flatnonzero(counts).tolist()
    shares = {index: f"({100 * counts[index] / mask.size:.1f} % of the image)" for index in present}
    return class_legend(class_names, palette(len(class_names)), present, shares)


def overlay_figure(name: str, image: np.ndarray, mask: np.ndarray, class_names: list[str]) -> np.ndarray:
    """The quick-look of one prediction: the image tinted by class, titled NAME, with the legend of
    `overlay_legend`. Why: the tint colours are arbitrary, so without the key the overlay does not say which
    class is where; the mask files (STEM.png, STEM.mask.tif) are written apart and keep their plain class ids."""
    legend = overlay_legend(mask, class_names)
    return compose(
        [("prediction (classes tinted 50 %)", overlay(image, mask, len(class_names)))],
        legend,
        name,
        f"Classes present ({len(legend)} of the {len(class_names)} asked for):",
    )


class Predictor:
    """Python API: `Predictor(checkpoint).predict(image, ["building", "road"])` -> (H, W) class ids."""

    def __init__(self, checkpoint: Path, device: str | None = None, settings: EvalConfig | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.config, payload = load_model(checkpoint, self.device)
        self.trained_classes: list[str] = payload["class_names"]
        self.settings = settings or self.config.eval
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def class_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """Text embeddings, computed once per class list (the text encoder is frozen at inference)."""
        key = tuple(class_names)
        if key not in self._text:
            self._text[key] = self.model.encode_classes(list(class_names))
        return self._text[key]

    def predict(self, image: np.ndarray, class_names: list[str]) -> np.ndarray:
        check_class_count(class_names)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(self.device)
        mask = predict_mask(self.model, pixels, self.class_embeddings(class_names), self.settings)
        return mask.to(torch.uint8).cpu().numpy()

    def predict_files(
        self, paths: list[Path], class_names: list[str], out: Path, tile_size: int = 2048, overlap: int = 128
    ) -> list[Path]:
        """Writes OUT/STEM.png (class ids), OUT/STEM.overlay.png (the quick-look, with its legend) and, for
        georeferenced inputs, OUT/STEM.mask.tif on the input's grid; returns the mask paths. Rasters larger
        than `tile_size` are predicted tile by tile and stitched into OUT/STEM.mask.tif only (memory: one tile)."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for path in paths:
            with RasterSource(path) as source:
                large = max(source.dataset.width, source.dataset.height) > tile_size
            if large:
                written.append(
                    self.predict_large_raster(path, class_names, out / f"{path.stem}.mask.tif", tile_size, overlap)
                )
                continue
            image, crs, transform = read_image(path)
            mask = self.predict(image, class_names)
            written.append(write_png(out / f"{path.stem}.png", mask))
            if transform is not None:
                write_mask_geotiff(out / f"{path.stem}.mask.tif", mask, crs, transform)
            write_png(out / f"{path.stem}.overlay.png", overlay_figure(path.name, image, mask, class_names))
        return written

    def predict_large_raster(
        self, path: Path, class_names: list[str], destination: Path, tile_size: int, overlap: int
    ) -> Path:
        """Windows of `tile_size` (overlapping by `overlap`), each through the sliding-window scheme,
        stitched with the build's seam rule (each seam mid-overlap) into a tiled GeoTIFF."""
        with RasterSource(path) as source:
            dataset = source.dataset
            windows = plan_windows(dataset.width, dataset.height, tile_size, overlap)
            crs = dataset.crs.to_wkt() if source.georeferenced else None
            transform = list(dataset.transform)[:6] if source.georeferenced else None
            return stitch_to_geotiff(
                windows,
                lambda index: self.predict(source.read(windows[index])[0], class_names),
                destination,
                dataset.width,
                dataset.height,
                crs,
                transform,
            )
