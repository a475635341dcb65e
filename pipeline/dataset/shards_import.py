"""Labelled image/mask pairs made elsewhere, as a build's shards: `ovrsis shards import`.

`piseg train --shards` reads what `ovrsis build` writes; a researcher reproducing the paper starts
from the released OVRSIS95K (`{split}/img/*.jpg` + `{split}/mask/*.png`, the layout `ovrsis shards
export --layout official` writes), from DLRSD or iSAID, or from their own labelled folders. This
module pairs their files, checks every pair against the taxonomy, and hands the good ones to the
same shard writer a build uses (`pipeline.dataset.shards.write_shards`), so the shards, the manifest and
`ovrsis shards verify` are a build's.

Layouts:
- `official`: `SOURCE/{split}/img/STEM.{jpg,png,tif}` + `SOURCE/{split}/mask/STEM.png`; the splits are
  kept as released (`train`, `val`, `test`, any folder holding `img/` and `mask/`).
- `folders`: `SOURCE/images/**/STEM.*` + `SOURCE/masks/**/STEM.*`, paired by their path below the two
  folders (DLRSD's `Images/CLASS/NAME.tif` with `labels/CLASS/NAME.png` pairs this way, with
  `--images`/`--masks` naming the folders); split by `--val-fraction` as a build splits.

Mask values are the taxonomy's indices (255: not labelled) unless a value map (a YAML of
`value: class name`, or `value: null` for not labelled) says otherwise, as DLRSD's 1-17 or iSAID's
0-15 need. A pair whose files cannot be read, whose sizes differ, or whose mask holds a value the
map and the taxonomy do not know is quarantined with its reason (`OUT/import/quarantine.jsonl`);
a file left out of every pair (no partner, one name for several files, a link leading out of the
source, a name that makes no usable key) is listed with its reason. The import goes on either way.

Source bytes are kept: an image that is a whole JPEG or PNG file goes into the shard as that file's
bytes (the shard writer checks they decode to the same pixels); other images (TIFF) are stored as
the build stores tiles. Masks are stored as PNG of the mapped values.

Resumable and flat in memory: each pair's check is appended to `OUT/import/checked.jsonl` as it is
made (keyed by both files' size and modification time, the value map and the taxonomy), so a rerun
after a stop checks only what changed; the process keeps per pair only its key, paths, size and
digest, never pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovrsis.errors import ShardImportError
from pipeline.dataset.records import SourceInfo, TileRecord, Window, tile_key
from pipeline.dataset.shards import ShardConfig
from pipeline.files.atomic import atomic_path, file_sha256
from pipeline.files.layout import records_file
from pipeline.files.safe_names import UnsafeName, confined_name
from pipeline.raster.label_rasters import LabelRasterError, read_tile, tile_sources
from pipeline.raster.tiling import TilingConfig
from taxonomy.loader import Taxonomy
from taxonomy.masks import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
LAYOUTS = ("official", "folders", "rasters")
CHECKED = Path("import") / "checked.jsonl"
QUARANTINE = Path("import") / "quarantine.jsonl"


@dataclass(frozen=True)
class Pair:
    key: str
    image: Path
    mask: Path
    split: str | None  # None: split by the shard configuration's val_fraction
    source: SourceInfo | None = None  # `rasters` layout: the tile's window and georeference in the image


@dataclass(frozen=True)
class Checked:
    """What the check of one pair found; `reason` is None for a good pair."""

    key: str
    image: str
    mask: str
    split: str | None
    stamp: str  # both files' size and mtime, the value map and the taxonomy: a change means a new check
    width: int = 0
    height: int = 0
    sha256: str = ""
    reason: str | None = None
    source: dict | None = None  # `rasters` layout: the tile's SourceInfo


def find_pairs(source: Path, layout: str, images: str = "images", masks: str = "masks") -> tuple[list[Pair], list[str]]:
    """The pairs of `source` in `layout`, sorted by key, and the files left out with the reason: no
    partner, one name for several files, a link leading out of its folder, a name that makes no
    usable key, a key two pairs would share. Nothing is guessed: such files are never imported."""
    if layout == "official":
        splits = sorted(p for p in source.iterdir() if (p / "img").is_dir() and (p / "mask").is_dir())
        if not splits:
            raise ShardImportError(f"{source}: no SPLIT/img and SPLIT/mask folders (the official OVRSIS95K layout)")
        pairs, left_out = [], []
        for split in splits:
            try:
                confined_name(split.name, "split folder")
                split.name.encode("utf-8")
            except (UnsafeName, UnicodeEncodeError) as error:
                left_out.append(f"{split}: not imported: no usable split name ({error})")
                continue
            found, problems = _pair_folders(split / "img", split / "mask", split.name)
            pairs += found
            left_out += problems
    elif layout in ("folders", "rasters"):
        image_root, mask_root = source / images, source / masks
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise ShardImportError(f"{folder}: not a folder (the `folders` layout needs {images}/ and {masks}/)")
        pairs, left_out = _pair_folders(image_root, mask_root, None)
    else:
        raise ShardImportError(f"unknown layout {layout!r} (one of: {', '.join(LAYOUTS)})")
    shared = Counter(pair.key for pair in pairs)
    for pair in pairs:
        if shared[pair.key] > 1:
            left_out.append(f"{pair.image}: not imported: its key {pair.key!r} is another pair's too")
    return sorted((p for p in pairs if shared[p.key] == 1), key=lambda p: p.key), left_out


def _pair_folders(image_root: Path, mask_root: Path, split: str | None) -> tuple[list[Pair], list[str]]:
    """Files paired by their path below the two roots, without the suffix; the key is that path with
    `/` as `__` and `.` as `_` (one file name, as the shard writer needs: no dot in a key)."""
    images, left_out = _files_by_stem(image_root, IMAGE_SUFFIXES)
    masks, mask_problems = _files_by_stem(mask_root, MASK_SUFFIXES)
    left_out += mask_problems
    pairs = []
    for stem in sorted(images.keys() & masks.keys()):
        key = stem.replace("/", "__").replace(".", "_")
        try:
            confined_name(f"{key}.mask.png", "sample key")
            key.encode("utf-8")
        except (UnsafeName, UnicodeEncodeError) as error:
            left_out.append(f"{images[stem]}: not imported: its name makes no usable key ({error})")
            continue
        pairs.append(Pair(key, images[stem], masks[stem], split))
    left_out += [f"{images[s]}: no mask" for s in sorted(images.keys() - masks.keys())]
    left_out += [f"{masks[s]}: no image" for s in sorted(masks.keys() - images.keys())]
    return pairs, left_out


def _files_by_stem(root: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    """The files below `root` by their path without the suffix. Left out, with the reason: a link
    that resolves outside `root` (a source must not pull in files from elsewhere), a linked folder
    (not followed), and every file of a name two files share (x.jpg and x.png: which is meant?)."""
    found: dict[str, Path] = {}
    shared: dict[str, list[Path]] = {}
    problems: list[str] = []
    inside = root.resolve()
    for directory, folders, files in os.walk(root):
        folders.sort()
        problems += [
            f"{Path(directory) / f}: a linked folder, not followed"
            for f in folders
            if (Path(directory) / f).is_symlink()
        ]
        for name in sorted(files):
            path = Path(directory) / name
            if path.suffix.lower() not in suffixes or name.startswith("."):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                problems.append(f"{path}: a link to a file outside {root}, left out")
                continue
            stem = path.relative_to(root).with_suffix("").as_posix()
            if stem in shared:
                shared[stem].append(path)
            elif stem in found:
                shared[stem] = [found.pop(stem), path]
            else:
                found[stem] = path
    problems += [f"{', '.join(map(str, paths))}: one name, several files: left out" for paths in shared.values()]
    return found, problems


class ValueMap:
    """Source mask value -> taxonomy index (IGNORE_INDEX for not labelled), as a 256-entry lookup table;
    values the map does not name are refused (None in `known`)."""

    def __init__(self, table: np.ndarray, known: np.ndarray, text: str) -> None:
        self.table, self.known, self.text = table, known, text

    @classmethod
    def identity(cls, taxonomy: Taxonomy) -> ValueMap:
        known = np.zeros(256, bool)
        known[: len(taxonomy)] = known[IGNORE_INDEX] = True
        return cls(np.arange(256, dtype=np.uint8), known, "identity")

    @classmethod
    def from_yaml(cls, path: Path, taxonomy: Taxonomy) -> ValueMap:
        import yaml

        try:
            entries = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ShardImportError(f"{path}: cannot read the value map ({error})") from error
        if not isinstance(entries, dict) or not entries:
            raise ShardImportError(f"{path}: the value map must be a mapping of mask value to class name (or null)")
        table, known = np.zeros(256, np.uint8), np.zeros(256, bool)
        for value, name in entries.items():
            if type(value) is not int or not 0 <= value <= 255:
                raise ShardImportError(f"{path}: {value!r} is not a mask value (0-255)")
            if name is None:
                table[value] = IGNORE_INDEX
            elif isinstance(name, str) and name in taxonomy.names:
                table[value] = taxonomy.index_of(name)
            else:
                raise ShardImportError(
                    f"{path}: value {value}: {name!r} is not a class of the taxonomy ({len(taxonomy)} classes)"
                )
            known[value] = True
        return cls(table, known, json.dumps({str(k): v for k, v in sorted(entries.items())}))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return self.table[values]

    def unknown(self, values: np.ndarray) -> list[int]:
        present = np.unique(values)
        return present[~self.known[present]].tolist()


def check_pair(pair: Pair, value_map: ValueMap, stamp: str) -> Checked:
    """Read both files whole once: the image decodes to 3 bands of 8 bits, the mask to one band of the
    image's size whose every value the map knows (the map only names classes of the taxonomy)."""
    base = {"key": pair.key, "image": str(pair.image), "mask": str(pair.mask), "split": pair.split, "stamp": stamp}
    if pair.source is not None:
        return _check_tile(pair, value_map, base)
    try:
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
    except ShardImportError as error:
        return Checked(**base, reason=str(error))
    if mask.shape != image.shape[:2]:
        reason = f"mask {mask.shape[1]}x{mask.shape[0]} px, image {image.shape[1]}x{image.shape[0]} px"
        return Checked(**base, reason=reason)
    if unknown := value_map.unknown(mask):
        return Checked(
            **base, reason=f"{pair.mask}: mask values {unknown[:10]} are in no class (value map: {value_map.text})"
        )
    return Checked(**base, width=image.shape[1], height=image.shape[0], sha256=file_sha256(pair.image))


def _check_tile(pair: Pair, value_map: ValueMap, base: dict) -> Checked:
    """A window of an image/label raster pair (the `rasters` layout): readable, not all nodata, and
    every label value known to the map."""
    try:
        _, values, valid = read_tile(pair.image, pair.mask, pair.key.rsplit("__r", 1)[0], pair.source.window)
    except LabelRasterError as error:
        return Checked(**base, reason=str(error))
    if unknown := value_map.unknown(values[valid]):
        return Checked(
            **base, reason=f"{pair.mask}: label values {unknown[:10]} are in no class (value map: {value_map.text})"
        )
    window = pair.source.window
    return Checked(**base, width=window.width, height=window.height, source=pair.source.model_dump(mode="json"))


def tile_arrays(entry: Checked, value_map: ValueMap) -> tuple[np.ndarray, np.ndarray]:
    """A good entry's image and mask as the shards store them (mapped values; 255 where not labelled)."""
    if entry.source is None:
        return read_image(Path(entry.image)), value_map.apply(read_mask(Path(entry.mask)))
    window = Window.model_validate(entry.source["window"])
    pixels, values, valid = read_tile(Path(entry.image), Path(entry.mask), entry.key.rsplit("__r", 1)[0], window)
    mask = value_map.apply(values)
    mask[~valid] = IGNORE_INDEX
    return pixels, mask


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file; ShardImportError naming the file and the problem."""
    try:
        with Image.open(path) as opened:
            if opened.mode not in ("RGB", "L", "P", "RGBA", "LA"):
                raise ShardImportError(f"{path}: image mode {opened.mode} is not 8-bit RGB or grey")
            return np.asarray(opened.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as error:
        raise ShardImportError(f"{path}: cannot read the image ({error})") from error


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 values of a one-band mask file (a palette PNG's indices, not its colours)."""
    try:
        with Image.open(path) as opened:
            if opened.mode not in ("L", "P"):
                raise ShardImportError(f"{path}: mask mode {opened.mode}: one band of class values (L or P) is needed")
            return np.asarray(opened)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as error:
        raise ShardImportError(f"{path}: cannot read the mask ({error})") from error


def stamp_of(pair: Pair, value_map: ValueMap, taxonomy: Taxonomy) -> str:
    """What a check depends on: a rerun re-checks a pair when any of it changed."""
    image, mask = pair.image.stat(), pair.mask.stat()
    window = pair.source.window.model_dump() if pair.source else None  # `rasters`: another tiling, another check
    parts = [image.st_size, image.st_mtime_ns, mask.st_size, mask.st_mtime_ns, value_map.text, taxonomy.version, window]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class CheckLedger:
    """`OUT/import/checked.jsonl`, read by byte offset: the importer keeps an offset per pair, never
    its entry, so memory stays flat (an int and a key a pair) however many pairs there are."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / CHECKED
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._reader = open(self.path, "rb")  # noqa: SIM115 (kept open for random reads, closed by close())

    def offsets(self) -> dict[str, int]:
        """The latest entry of each key; a torn last line (a stopped import) is skipped: checked again."""
        found: dict[str, int] = {}
        self._reader.seek(0)
        offset = 0
        for line in self._reader:
            try:
                found[json.loads(line)["key"]] = offset
            except (ValueError, KeyError, TypeError):
                pass
            offset += len(line)
        return found

    def entry(self, offset: int) -> Checked:
        self._reader.seek(offset)
        return Checked(**json.loads(self._reader.readline()))

    def close(self) -> None:
        self._reader.close()


def checked_pairs(
    ledger: CheckLedger, pairs: list[Pair], value_map: ValueMap, taxonomy: Taxonomy, on_pair: Callable[[], None]
) -> Iterator[tuple[Checked, int]]:
    """Every pair's check and its offset in the ledger: the earlier one where it still holds (same
    files, stamp and split), else made now and appended at once (a stopped import keeps its checks)."""
    earlier = ledger.offsets()
    with open(ledger.path, "ab") as sink:
        for pair in pairs:
            try:
                stamp = stamp_of(pair, value_map, taxonomy)
            except OSError as error:  # gone, a dangling link, unreadable folder: this pair only
                entry: Checked | None = Checked(
                    pair.key, str(pair.image), str(pair.mask), pair.split, "", reason=f"{error}"
                )
            else:
                offset = earlier.pop(pair.key, None)
                entry = None if offset is None else ledger.entry(offset)
                if entry is not None and (entry.stamp, entry.image, entry.mask, entry.split) == (
                    stamp,
                    str(pair.image),
                    str(pair.mask),
                    pair.split,
                ):
                    on_pair()
                    yield entry, offset
                    continue
                entry = check_pair(pair, value_map, stamp)
            offset = sink.tell()
            sink.write((json.dumps(asdict(entry)) + "\n").encode())
            sink.flush()
            on_pair()
            yield entry, offset


class ImportedRecords(Mapping[str, TileRecord]):
    """The good pairs as tile records, made when the shard writer asks for one from the check ledger:
    the importer holds an offset per pair, never a record or pixels."""

    def __init__(self, good: dict[str, int], ledger: CheckLedger, source: Path, layout: str) -> None:
        self.good, self.ledger, self.source, self.layout = good, ledger, source, layout

    def __getitem__(self, key: str) -> TileRecord:
        entry = self.ledger.entry(self.good[key])
        provenance = {"imported_from": str(self.source), "layout": self.layout}
        if entry.source is not None:  # a window of a raster: its georeference as the build records it
            return TileRecord(key=key, source=SourceInfo.model_validate(entry.source), provenance=provenance)
        return TileRecord(
            key=key,
            source=SourceInfo(
                path=entry.image,
                sha256=entry.sha256,
                window=Window(row_off=0, col_off=0, height=entry.height, width=entry.width),
                band_mapping=[1, 2, 3],
                stretch="none",
                dtype="uint8",
                raster_width=entry.width,
                raster_height=entry.height,
            ),
            provenance=provenance,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.good)

    def __len__(self) -> int:
        return len(self.good)


@dataclass
class ImportSummary:
    imported: int
    quarantined: int
    left_out: int  # files never paired: no partner, ambiguous or unusable names, links out of the source
    manifest: dict
    quarantine_file: Path


def import_pairs(
    source: Path,
    out_dir: Path,
    taxonomy: Taxonomy,
    layout: str = "official",
    value_map: ValueMap | None = None,
    config: ShardConfig | None = None,
    folders: tuple[str, str] = ("images", "masks"),
    tiling: TilingConfig | None = None,
    on_total: Callable[[int], None] = lambda total: None,
    on_pair: Callable[[], None] = lambda: None,
) -> ImportSummary:
    """Pair, check and shard `source` into `out_dir` (shards/, manifest.json, import/); ShardImportError
    when nothing can be imported, with the reasons written first."""
    from pipeline.dataset.shards import write_shards

    if (records_file(out_dir)).exists():
        raise ShardImportError(f"{out_dir}: a build's output folder (records.jsonl): import into a folder of its own")
    value_map = value_map or ValueMap.identity(taxonomy)
    pairs, left_out = find_pairs(source, layout, *folders)
    if layout == "rasters":
        pairs, left_out = tile_pairs(pairs, tiling or TilingConfig(), left_out)
    if not pairs:
        raise ShardImportError(f"{source}: no image has a mask of the same name ({len(left_out)} files left out)")
    on_total(len(pairs))
    good: dict[str, int] = {}  # key -> offset of its entry in the check ledger
    splits: dict[str, list[str]] = {}
    bad: list[Checked] = []
    ledger = CheckLedger(out_dir)
    try:
        for entry, offset in checked_pairs(ledger, pairs, value_map, taxonomy, on_pair):
            if entry.reason is None:
                good[entry.key] = offset
                splits.setdefault(entry.split, []).append(entry.key)
            else:
                bad.append(entry)
        total = len(pairs)
        del pairs  # the pairs' paths are in the ledger now
        quarantine_file = write_quarantine(out_dir, bad, left_out)
        if not good:
            raise ShardImportError(
                f"{source}: none of the {total} pairs could be imported; reasons in {quarantine_file}"
            )

        def load(record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
            return tile_arrays(ledger.entry(good[record.key]), value_map)

        manifest = write_shards(
            out_dir,
            ImportedRecords(good, ledger, source.resolve(), layout),
            load,
            taxonomy.names,
            taxonomy.version,
            config or ShardConfig(),
            build_config={"imported_from": str(source.resolve()), "layout": layout, "value_map": value_map.text},
            quarantined=len(bad),
            inputs=[source.resolve()],
            tile_counts={"imported": len(good), "quarantined": len(bad), "left_out": len(left_out)},
            splits=splits if layout == "official" else None,  # as released; else split as a build splits
        )
    finally:
        ledger.close()
    return ImportSummary(len(good), len(bad), len(left_out), manifest, quarantine_file)


def tile_pairs(pairs: list[Pair], tiling: TilingConfig, left_out: list[str]) -> tuple[list[Pair], list[str]]:
    """Each image/label raster pair as the build's windows (`pipeline.raster.label_rasters`); a pair that
    cannot be tiled is left out with the reason, the others go on."""
    tiles: list[Pair] = []
    for pair in pairs:
        try:
            sources = tile_sources(pair.image, pair.mask, pair.key, tiling)
        except LabelRasterError as error:
            left_out.append(f"not imported: {error}")
            continue
        tiles += [
            Pair(tile_key(pair.key, s.window.row_off, s.window.col_off), pair.image, pair.mask, pair.split, s)
            for s in sources
        ]
    return tiles, left_out


def write_quarantine(out_dir: Path, bad: list[Checked], left_out: list[str]) -> Path:
    path = out_dir / QUARANTINE
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            for entry in bad:
                handle.write(
                    json.dumps({"key": entry.key, "image": entry.image, "mask": entry.mask, "reason": entry.reason})
                    + "\n"
                )
            for line in left_out:
                handle.write(json.dumps({"key": None, "reason": line}) + "\n")
    return path


__all__ = [
    "LAYOUTS",
    "Checked",
    "ShardImportError",
    "ImportSummary",
    "ImportedRecords",
    "Pair",
    "CheckLedger",
    "ValueMap",
    "check_pair",
    "checked_pairs",
    "find_pairs",
    "import_pairs",
    "read_image",
    "read_mask",
    "write_quarantine",
]
