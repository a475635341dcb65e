"""Ingest any remote-sensing raster as 8-bit RGB tiles, reading window by window.

Band rule (documented in the README and recorded per tile):
- bands: explicit 1-based `bands=(r, g, b)`, else the bands whose colour interpretation is red,
  green, blue, else bands 1, 2, 3; a raster with fewer than 3 bands is panchromatic: band 1 is
  replicated to R, G and B.
- stretch: `auto` leaves uint8 as it is and maps every other type (uint16, int16, float) with a
  per-band percentile stretch (2-98 % by default) to 0-255. The percentiles come from one decimated
  read of the whole raster (at most ~1024 px on its long side), so every tile of a raster gets the
  same mapping and no tile's histogram changes its neighbour's colours.
- nodata: pixels the dataset mask marks invalid (nodata value, alpha or internal mask) are black in
  the image and become 255 (ignore) in every mask; a tile with no valid pixel is quarantined.
- PNG and JPEG (up to PIL's decompression-bomb limit, ~89 MP) are decoded by PIL, as detectron2's
  reader does: a file cut short is an error (GDAL would return garbage), the EXIF orientation is
  applied (unless the file is georeferenced: a world file describes the stored grid), and palette
  images are expanded to RGB.

Large rasters are never read whole: tiles come from windowed reads, so memory stays flat. A header
claiming more than `max_pixels` (default 2.5e9, a 50000 x 50000 raster) is refused before any read.
Every failure to open, decode or read becomes an IngestError whose message is the reason to record
(GDAL's own words, not rasterio's "See previous exception").
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, ImageOps
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window as RioWindow
from rasterio.windows import transform as window_transform

from ovrsis.errors import IngestError
from pipeline.dataset.records import Quarantine, SourceInfo, TileRecord, Window, tile_key
from pipeline.files.atomic import file_sha256
from pipeline.files.safe_names import MAX_NAME_BYTES, UnsafeName, confined_name
from pipeline.raster.gdal_env import unlisted
from pipeline.raster.tiling import MAX_PIXELS, BandRule, TilingConfig

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".img", ".vrt")
# world files (.tfw, .jgw, .pgw, ...), GDAL's overviews, masks and metadata, RPC models: they travel with imagery
SIDECAR_SUFFIXES = (
    *(".xml", ".aux", ".ovr", ".msk", ".rrd", ".json", ".jsonl", ".geojson", ".txt", ".md", ".prj", ".wld"),
    *(".tfw", ".tifw", ".tiffw", ".jgw", ".jpw", ".jpgw", ".pgw", ".pngw", ".j2w", ".gfw", ".bpw"),
    *(".rpb", ".rpc", ".imd"),
)
STATS_MAX_SIDE = 1024
MIN_SIDE = 16  # the smallest raster tiled: the models' image processors fail on slivers (a 1 x 1 raster)
GDAL_CACHE_MB = 256  # GDAL's block cache; its default, 5 % of RAM, grows by gigabytes over one large raster
PIL_DRIVERS = ("PNG", "JPEG")  # decoded by PIL: truncation is an error, EXIF orientation applied


@dataclass
class Tile:
    """An ingested tile: the 8-bit RGB pixels, which pixels are valid, and its record."""

    image: np.ndarray  # (H, W, 3) uint8
    valid: np.ndarray  # (H, W) bool
    record: TileRecord


def find_rasters(path: Path) -> tuple[list[Path], list[TileRecord]]:
    """Rasters under a folder (recursively) or the single file given. Everything else that is not a
    sidecar (.xml, .ovr, ... skipped quietly) comes back as a quarantined record with its reason, so
    the summary lists it: other formats, broken symbolic links, special files, directories named
    like rasters."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found")
    candidates = [path] if not path.is_dir() else sorted(path.rglob("*"))
    rasters, skipped = [], []
    for candidate in candidates:
        if candidate != path and _is_sidecar(candidate):
            continue
        reason = _not_a_raster(candidate)
        if reason is None:
            rasters.append(candidate)
        elif reason:
            skipped.append(quarantined_file(candidate, reason))
    return rasters, skipped


def _not_a_raster(path: Path) -> str | None:
    """Why `path` is not read as a raster; None for a raster file, "" for a folder to walk through."""
    suffix = path.suffix.lower()
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    if path.is_dir():
        return "not a regular file: a directory with a raster's name" if suffix in SUPPORTED_SUFFIXES else ""
    if not path.is_file():
        return "not a regular file (a FIFO, socket or device): not read"
    if suffix not in SUPPORTED_SUFFIXES:
        return f"unsupported format {suffix or '(no extension)'}"
    return None


def bounded_reads() -> rasterio.Env:
    """A GDAL environment whose block cache stays small, so tiling a huge raster keeps memory flat
    (every block is read once anyway). A GDAL_CACHEMAX set in the environment wins."""
    return rasterio.Env(GDAL_CACHEMAX=os.environ.get("GDAL_CACHEMAX", GDAL_CACHE_MB))


@dataclass(frozen=True)
class SourceKeys:
    """The stem every input file's tile keys start with (`source_keys`), and the files whose stem is
    not the plain one: the caller says so before any model loads, because their keys, masks and
    reviews differ from what the plain rule would have given."""

    stems: dict[Path, str]  # every raster and every file set aside
    renamed: dict[Path, str]  # file -> the plain stem it shares with another file, or that is unsafe

    def rekeyed(self, set_aside: Sequence[TileRecord]) -> list[TileRecord]:
        """The records of files set aside, under their planned stems (`quarantined_file` gave them the plain one)."""
        return [r.model_copy(update={"key": tile_key(self.stems[Path(r.source.path)], 0, 0)}) for r in set_aside]

    def note(self) -> str:
        """One line per renamed file, naming it, the stem its keys start with, and the plain one."""
        lines = [f"{path} -> keys {self.stems[path]}__r*_c* (not {plain})" for path, plain in self.renamed.items()]
        return "\n".join(
            [f"{len(lines)} input file(s) renamed so that every tile key is a distinct, safe file name:", *lines]
        )


def source_keys(rasters: list[Path], set_aside: Sequence[TileRecord] = ()) -> SourceKeys:
    """The stem of each input's tile keys, planned from the file names alone, before any model loads.

    Plain rule (the keys of every build before collisions were checked, kept so that outputs, reviews
    in the ledger and caches stay valid): a raster's stem, or its name when two rasters share a stem
    (a.tif, a.png), with dots replaced; a file set aside, its stem. Two files whose plain stems are
    equal (a.b.tif and a_b.tif, x.tif beside an unsupported x.bmp, d1/x.tif and d2/x.tif) would share
    keys and one tile's mask would overwrite the other's; one of them keeps the plain stem (`_yielding`
    says which) and every other, and any file whose plain stem is no safe file name (`_safe_stem`),
    gets `_disambiguated` instead: independent of input order."""
    paths = [Path(r.source.path) for r in set_aside]
    counts = Counter(p.stem for p in rasters)
    plain = {p: (p.stem if counts[p.stem] == 1 else p.name).replace(".", "_") for p in rasters}
    plain.update({p: p.stem for p in paths if p not in plain})
    renamed = {p for p, stem in plain.items() if not _safe_stem(stem)} | _yielding(plain, set(rasters))
    stems = _stems(plain, renamed)
    while clashing := _sharing(stems) - renamed:  # a renamed stem equal to another file's plain one
        renamed |= clashing
        stems = _stems(plain, renamed)
    if _sharing(stems):
        raise ValueError(f"input files that cannot be given distinct tile keys: {sorted(map(str, _sharing(stems)))}")
    return SourceKeys(stems, {p: plain[p] for p in sorted(renamed)})


# The longest file name a key stem makes: masks/KEY.proposed.png, window offsets of up to 7 digits (a
# 10-million-pixel side, far over the largest raster `max_pixels` lets through).
KEY_TAIL = "__r0000000_c0000000.proposed.png"
DIGEST_CHARS = 8


def _safe_stem(stem: str) -> bool:
    """Whether every file named after keys of this stem is one plain path component (`confined_name`)
    and JSON can hold it (a non-UTF-8 file name cannot be written to records.jsonl)."""
    try:
        confined_name(stem + KEY_TAIL, "tile key")
        stem.encode("utf-8")
    except (UnsafeName, UnicodeEncodeError):
        return False
    return True


def _yielding(plain: dict[Path, str], rasters: set[Path]) -> set[Path]:
    """Of each group of files sharing a plain stem, all but one: the one that keeps the stem, so the keys
    (and the reviews in the ledger) of a build made before the clash stay its own, is a raster before a
    file set aside (which never had masks or reviews), a file whose stem is the key unchanged (a_b.tif
    before a.b.tif), then the first path in sorted order (independent of input order)."""
    groups: dict[str, list[Path]] = {}
    for path, stem in plain.items():
        groups.setdefault(stem, []).append(path)
    keepers = {
        min(group, key=lambda p, stem=stem: (p not in rasters, p.stem != stem, str(p)))
        for stem, group in groups.items()
        if len(group) > 1
    }
    return _sharing(plain) - keepers


def _sharing(stems: dict[Path, str]) -> set[Path]:
    """The files whose stem another file has too."""
    counts = Counter(stems.values())
    return {p for p, stem in stems.items() if counts[stem] > 1}


def _stems(plain: dict[Path, str], renamed: set[Path]) -> dict[Path, str]:
    """Plain stems, except the renamed files', which are `_disambiguated` within their plain stem's group."""
    groups: dict[str, list[Path]] = {}
    for path, stem in plain.items():
        groups.setdefault(stem, []).append(path)
    return {p: _disambiguated(p, groups[plain[p]]) if p in renamed else plain[p] for p in plain}


def _disambiguated(path: Path, group: list[Path]) -> str:
    """`{name, dots and unsafe characters as _}_{digest}`: the digest is of the file's path relative
    to the folder holding every file of its group, so the stem is the same from any working directory,
    after moving the whole tree and in any input order; the name is cut to leave room for KEY_TAIL."""
    common = os.path.commonpath([os.path.abspath(p.parent) for p in group])
    relative = Path(os.path.relpath(os.path.abspath(path), common)).as_posix()
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:DIGEST_CHARS]
    name = re.sub(r"[./\\\x00-\x1f\x7f]", "_", path.name).encode("utf-8", "surrogateescape")
    room = MAX_NAME_BYTES - len(KEY_TAIL) - len(digest) - 1
    return f"{name[:room].decode('utf-8', 'ignore')}_{digest}"


def _is_sidecar(path: Path) -> bool:
    """Files that travel with imagery (metadata, licences, world files) are not inputs."""
    name = path.name.lower()
    return name.startswith((".", "license", "licence", "readme", "copying")) or path.suffix.lower() in SIDECAR_SUFFIXES


def plan_windows(width: int, height: int, tile_size: int, overlap: int) -> list[Window]:
    """Tiles of `tile_size` stepping by `tile_size - overlap`; the last row and column are moved
    back to end at the raster's edge (so no tile is padded), and a raster smaller than a tile is
    one tile of its own size."""
    if width <= 0 or height <= 0:
        return []
    step = tile_size - overlap

    def offsets(size: int) -> list[int]:
        if size <= tile_size:
            return [0]
        starts = list(range(0, size - tile_size + 1, step))
        if starts[-1] + tile_size < size:
            starts.append(size - tile_size)
        return starts

    return [
        Window(row_off=r, col_off=c, height=min(tile_size, height), width=min(tile_size, width))
        for r in offsets(height)
        for c in offsets(width)
    ]


def planned_tiles(rasters: list[Path], tiling: TilingConfig, max_pixels: int = MAX_PIXELS) -> int:
    """Tiles a run will visit, from raster headers only (for progress bars); a file that cannot be
    opened, or whose header is over `max_pixels`, counts as the one record it will get."""
    total = 0
    for path in rasters:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with unlisted(), rasterio.open(path) as dataset:
                    width, height = dataset.width, dataset.height
        except Exception:  # noqa: BLE001 - unreadable files are quarantined by the run itself
            width = height = 0
        refused = width * height > max_pixels
        total += 1 if refused else max(1, len(plan_windows(width, height, tiling.tile_size, tiling.overlap)))
    return total


class RasterSource:
    """One open raster with its band mapping and stretch fixed; yields tiles by windowed reads.
    Raises IngestError, with the reason, for any file that cannot be opened, decoded or read."""

    def __init__(
        self, path: Path, rule: BandRule = BandRule(), source_stem: str | None = None, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.path = path
        self.rule = rule
        self.stem = source_stem or path.stem
        self._memory: MemoryFile | None = None
        self.dataset = self._open(max_pixels)
        try:
            self._check()
            self.bands = self._choose_bands()
            self.ranges = self._stretch_ranges()
        except RasterioIOError as error:
            self.close()
            raise IngestError(f"read failed: {self._gdal_reason(error)}") from error
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.dataset.close()
        if self._memory is not None:
            self._memory.close()

    @cached_property
    def sha256(self) -> str:
        """Hashed only when a record needs it: readers that just re-read pixels skip the whole-file read."""
        try:
            return file_sha256(self.path)
        except OSError as error:
            raise IngestError(f"cannot be read: {error.strerror or error}") from error

    def _open(self, max_pixels: int) -> DatasetReader:
        """The dataset to read from: GDAL's, or for PNG/JPEG the PIL-decoded pixels in memory."""
        try:
            if self.path.stat().st_size == 0:
                raise IngestError("zero-byte file")
            with open(self.path, "rb"):  # GDAL would say "not recognized"; Python says "Permission denied"
                pass
        except OSError as error:
            raise IngestError(f"cannot be opened: {error.strerror or error}") from error
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with unlisted():  # a folder of thousands of sources is not listed at every open
                    dataset = rasterio.open(self.path)
        except RasterioIOError as error:
            raise IngestError(f"cannot be read as a raster ({self._gdal_reason(error)})") from error
        pixels = dataset.width * dataset.height
        if pixels > max_pixels:
            dataset.close()
            raise IngestError(
                f"header claims {dataset.width} x {dataset.height} = {pixels:,} pixels, over the limit of "
                f"{max_pixels:,} (--max-pixels); refused before reading"
            )
        if dataset.driver not in PIL_DRIVERS or pixels > Image.MAX_IMAGE_PIXELS:
            return dataset
        with dataset:
            self._memory = _decode_with_pil(self.path, dataset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return self._memory.open()

    def _gdal_reason(self, error: BaseException) -> str:
        """GDAL's own message: rasterio raises "Read failed. See previous exception for details." and
        chains GDAL's error as the cause. The file's name, which GDAL repeats, is left out."""
        messages = []
        while error is not None and len(messages) < 8:
            messages.append(_first_line(error))
            error = error.__cause__ or error.__context__
        specific = [m for m in messages if "see previous exception" not in m.lower()] or messages
        return specific[-1].removeprefix(f"{self.path}, ").removeprefix(f"{self.path}: ")

    @property
    def georeferenced(self) -> bool:
        return self.dataset.crs is not None

    def tiles(self, config: TilingConfig) -> Iterator[Tile | TileRecord]:
        """Each window as a Tile, or as a quarantined TileRecord saying why it cannot be used; IngestError
        for a raster too small to tile (reading a small image whole, as piseg does, is fine)."""
        for record in self.window_records(config):
            yield self.load(record, config)

    def window_records(self, config: TilingConfig) -> list[TileRecord]:
        """A record per window, from the header alone (no pixel is read): what a build plans batches
        from; `load` reads and checks each tile where its batch runs."""
        if min(self.dataset.width, self.dataset.height) < MIN_SIDE:
            raise IngestError(
                f"raster is {self.dataset.width} x {self.dataset.height} pixels: too small to tile, "
                f"at least {MIN_SIDE} on each side"
            )
        return [
            TileRecord(key=tile_key(self.stem, window.row_off, window.col_off), source=self._source(window))
            for window in plan_windows(self.dataset.width, self.dataset.height, config.tile_size, config.overlap)
        ]

    def load(self, record: TileRecord, config: TilingConfig) -> Tile | TileRecord:
        """The tile's pixels, or its record quarantined (stage ingest) saying why they cannot be used."""
        try:
            image, valid = self.read(record.source.window)
        except IngestError as error:
            record.quarantine = Quarantine(stage="ingest", reason=str(error))
            return record
        valid_fraction = float(valid.mean()) if valid.size else 0.0
        if not valid.any():
            record.quarantine = Quarantine(stage="ingest", reason="all pixels are nodata")
            return record
        if valid_fraction < config.min_valid_fraction:
            reason = f"only {valid_fraction:.1%} valid pixels (< {config.min_valid_fraction:.0%})"
            record.quarantine = Quarantine(stage="ingest", reason=reason)
            return record
        return Tile(image=image, valid=valid, record=record)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The window as 8-bit RGB and its valid-pixel mask; IngestError (GDAL's reason) if it cannot be read."""
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        try:
            data = self.dataset.read(list(self.bands), window=rio_window)
            valid = self.dataset.dataset_mask(window=rio_window) > 0
        except RasterioIOError as error:
            raise IngestError(f"read failed: {self._gdal_reason(error)}") from error
        image = np.stack([self._to_uint8(band, i) for i, band in enumerate(data)], axis=-1)
        image[~valid] = 0
        return image, valid

    def _check(self) -> None:
        dataset = self.dataset
        if dataset.width == 0 or dataset.height == 0:
            raise IngestError(f"raster has zero size ({dataset.width}x{dataset.height})")
        if dataset.count == 0:
            raise IngestError("raster has no bands")
        if np.dtype(dataset.dtypes[0]).kind == "c":
            raise IngestError(f"complex data type {dataset.dtypes[0]} is not imagery")
        if self.rule.bands and max(self.rule.bands) > dataset.count:
            raise IngestError(f"band mapping {self.rule.bands} asks for more than the {dataset.count} band(s) present")

    def _choose_bands(self) -> tuple[int, int, int]:
        if self.rule.bands:
            bands = tuple(self.rule.bands)
            return bands * 3 if len(bands) == 1 else bands[:3]  # type: ignore[return-value]
        count = self.dataset.count
        if count < 3:
            return (1, 1, 1)
        interp = list(self.dataset.colorinterp)
        wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        if all(c in interp for c in wanted):
            return tuple(interp.index(c) + 1 for c in wanted)  # type: ignore[return-value]
        return (1, 2, 3)

    def _stretch_mode(self) -> str:
        if self.rule.stretch == "auto":
            return "none" if self.dataset.dtypes[0] == "uint8" else "percentile"
        return self.rule.stretch

    def _stretch_ranges(self) -> list[tuple[float, float]] | None:
        if self._stretch_mode() == "none":
            return None
        dataset = self.dataset
        scale = max(dataset.width, dataset.height) / STATS_MAX_SIDE
        shape = (max(1, round(dataset.height / max(scale, 1))), max(1, round(dataset.width / max(scale, 1))))
        unique_bands = sorted(set(self.bands))
        sample = dataset.read(unique_bands, out_shape=(len(unique_bands), *shape), resampling=Resampling.nearest)
        valid = dataset.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
        ranges = {}
        for band, values in zip(unique_bands, sample):
            values = values[valid & np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values[valid]
            if values.size == 0:
                ranges[band] = (0.0, 1.0)
                continue
            low, high = np.percentile(values, [self.rule.low_percentile, self.rule.high_percentile])
            ranges[band] = (float(low), float(high) if high > low else float(low) + 1.0)
        return [ranges[b] for b in self.bands]

    def _to_uint8(self, band: np.ndarray, position: int) -> np.ndarray:
        if self.ranges is None:
            return (
                band.astype(np.uint8, copy=False) if band.dtype == np.uint8 else np.clip(band, 0, 255).astype(np.uint8)
            )
        low, high = self.ranges[position]
        scaled = (band.astype(np.float32) - low) * (255.0 / (high - low))
        return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)

    def _source(self, window: Window) -> SourceInfo:
        dataset = self.dataset
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        mode = self._stretch_mode()
        return SourceInfo(
            path=str(self.path),
            sha256=self.sha256,
            window=window,
            crs=dataset.crs.to_wkt() if dataset.crs else None,
            transform=list(window_transform(rio_window, dataset.transform))[:6] if self.georeferenced else None,
            band_mapping=list(self.bands),
            stretch="none"
            if mode == "none"
            else f"percentile {self.rule.low_percentile:g}-{self.rule.high_percentile:g} per band",
            nodata=dataset.nodata,
            dtype=dataset.dtypes[0],
            raster_width=dataset.width,
            raster_height=dataset.height,
        )


def quarantined_file(path: Path, reason: str, stem: str | None = None) -> TileRecord:
    """A record standing for a whole file that could not be tiled (hashed when it can be read). A
    raster's record takes the stem its tiles would have had (`source_keys`), so a.jpg and a.png that
    both fail keep distinct keys."""
    source = SourceInfo(
        path=str(path),
        sha256=_sha256_or_empty(path),
        window=Window(row_off=0, col_off=0, height=0, width=0),
        band_mapping=[],
        stretch="none",
        dtype="unknown",
        raster_width=0,
        raster_height=0,
    )
    return TileRecord(
        key=tile_key(stem or path.stem, 0, 0), source=source, quarantine=Quarantine(stage="ingest", reason=reason)
    )


def _sha256_or_empty(path: Path) -> str:
    try:
        return file_sha256(path) if path.is_file() else ""
    except OSError:  # unreadable: the record's reason says so
        return ""


def _decode_with_pil(path: Path, dataset: DatasetReader) -> MemoryFile:
    """The PNG/JPEG decoded by PIL into an in-memory GeoTIFF with the file's georeferencing.

    PIL raises on a file cut short, where GDAL's PNG driver returns garbage; EXIF orientation is
    applied to plain photos (not to georeferenced files, whose transform describes the stored grid);
    palette and other modes become RGB(A), grey or their integer/float type."""
    georeferenced = dataset.crs is not None or not dataset.transform.is_identity
    try:
        with Image.open(path) as opened:
            image = opened if georeferenced else ImageOps.exif_transpose(opened)
            image = _plain_mode(image)
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise IngestError(f"cannot be decoded: {_first_line(error)}") from error
    pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    bands = pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    profile = {
        "driver": "GTiff",
        "count": bands.shape[0],
        "height": bands.shape[1],
        "width": bands.shape[2],
        "dtype": bands.dtype.name,
        "crs": dataset.crs,
        "nodata": dataset.nodata,
        "transform": dataset.transform if georeferenced else Affine.identity(),
    }
    memory = MemoryFile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open(**profile) as out:
            out.write(bands)
            out.colorinterp = _COLOUR_INTERP.get(bands.shape[0], out.colorinterp)
    return memory


_COLOUR_INTERP = {
    3: (ColorInterp.red, ColorInterp.green, ColorInterp.blue),
    4: (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha),
}


def _plain_mode(image: Image.Image) -> Image.Image:
    """A mode numpy and GDAL read as bands: palettes and grey+alpha expand to RGB(A)."""
    if image.mode in ("L", "RGB", "RGBA", "I;16", "I;16B", "I", "F"):
        return image
    if image.mode in ("P", "PA", "LA"):
        has_alpha = image.mode != "P" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    return image.convert("RGB")  # 1, CMYK, YCbCr, ...


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
