"""Labelled image/mask pairs made elsewhere, as a build's shards: `ovrsis shards import`.

`piseg train --shards` reads what `ovrsis build` writes; a researcher reproducing the paper starts
from the released OVRSIS95K (`{split}/img/*.jpg` + `{split}/mask/*.png`, the layout `ovrsis shards
export --layout official` writes), from DLRSD or iSAID, or from their own labelled folders. This
module pairs their files, checks every pair against the taxonomy, and hands the good ones to the
same shard writer a build uses (`pipeline.shards.write_shards`), so the shards, the manifest and
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
a file without its partner is listed as unmatched. The import goes on either way.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.files import atomic_path, file_sha256
from pipeline.records import SourceInfo, TileRecord, Window
from pipeline.safe_names import UnsafeName, confined_name
from pipeline.shards import ShardConfig
from taxonomy.loader import Taxonomy
from taxonomy.masks import IGNORE_INDEX, values_outside

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
LAYOUTS = ("official", "folders")
CHECKED = Path("import") / "checked.jsonl"
QUARANTINE = Path("import") / "quarantine.jsonl"


class ShardImportError(ValueError):
    """The source cannot be imported at all (no pairs, an unknown layout, a bad value map)."""


@dataclass(frozen=True)
class Pair:
    key: str
    image: Path
    mask: Path
    split: str | None  # None: split by the shard configuration's val_fraction


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


def find_pairs(source: Path, layout: str, images: str = "images", masks: str = "masks") -> tuple[list[Pair], list[str]]:
    """The pairs of `source` in `layout`, sorted by key, and the files that have no partner."""
    if layout == "official":
        splits = sorted(p for p in source.iterdir() if (p / "img").is_dir() and (p / "mask").is_dir())
        if not splits:
            raise ShardImportError(f"{source}: no SPLIT/img and SPLIT/mask folders (the official OVRSIS95K layout)")
        pairs, unmatched = [], []
        for split in splits:
            found, lonely = _pair_folders(split / "img", split / "mask", split.name)
            pairs += found
            unmatched += lonely
    elif layout == "folders":
        image_root, mask_root = source / images, source / masks
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise ShardImportError(f"{folder}: not a folder (the `folders` layout needs {images}/ and {masks}/)")
        pairs, unmatched = _pair_folders(image_root, mask_root, None)
    else:
        raise ShardImportError(f"unknown layout {layout!r} (one of: {', '.join(LAYOUTS)})")
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ShardImportError(f"{source}: pairs share keys across splits: {', '.join(repeated)}")
    return sorted(pairs, key=lambda p: p.key), unmatched


def _pair_folders(image_root: Path, mask_root: Path, split: str | None) -> tuple[list[Pair], list[str]]:
    """Files paired by their path below the two roots, without the suffix; the key is that path with
    `/` as `__` (one file name: the shard member names it)."""
    images = _files_by_stem(image_root, IMAGE_SUFFIXES)
    masks = _files_by_stem(mask_root, MASK_SUFFIXES)
    pairs = [
        Pair(stem.replace("/", "__"), images[stem], masks[stem], split) for stem in sorted(images.keys() & masks.keys())
    ]
    unmatched = [f"{images[s]}: no mask" for s in sorted(images.keys() - masks.keys())]
    unmatched += [f"{masks[s]}: no image" for s in sorted(masks.keys() - images.keys())]
    return pairs, unmatched


def _files_by_stem(root: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if path.suffix.lower() in suffixes and not name.startswith("."):
                found.setdefault(path.relative_to(root).with_suffix("").as_posix(), path)
    return found


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
            if not isinstance(value, int) or not 0 <= value <= 255:
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


def check_pair(pair: Pair, value_map: ValueMap, classes: int, stamp: str) -> Checked:
    """Read both files whole once: the image decodes to 3 bands of 8 bits, the mask to one band of the
    image's size whose every value the map knows and whose mapped values the taxonomy holds."""
    base = {"key": pair.key, "image": str(pair.image), "mask": str(pair.mask), "split": pair.split, "stamp": stamp}
    try:
        confined_name(f"{pair.key}.mask.png", "sample key")
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
    except (UnsafeName, ShardImportError) as error:
        return Checked(**base, reason=str(error))
    if mask.shape != image.shape[:2]:
        reason = f"mask {mask.shape[1]}x{mask.shape[0]} px, image {image.shape[1]}x{image.shape[0]} px"
        return Checked(**base, reason=reason)
    if unknown := value_map.unknown(mask):
        return Checked(
            **base, reason=f"{pair.mask}: mask values {unknown[:10]} are in no class (value map: {value_map.text})"
        )
    if outside := values_outside(value_map.apply(mask), classes):
        return Checked(
            **base, reason=f"{pair.mask}: mask values {outside[:10]} outside the taxonomy's {classes} classes"
        )
    return Checked(**base, width=image.shape[1], height=image.shape[0], sha256=file_sha256(pair.image))


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
    parts = [image.st_size, image.st_mtime_ns, mask.st_size, mask.st_mtime_ns, value_map.text, taxonomy.version]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def checked_pairs(
    out_dir: Path, pairs: list[Pair], value_map: ValueMap, taxonomy: Taxonomy, on_pair: Callable[[], None]
) -> Iterator[Checked]:
    """Every pair's check, from `OUT/import/checked.jsonl` where it still holds, else made now and
    appended there at once (a stopped import keeps what it checked)."""
    ledger = out_dir / CHECKED
    ledger.parent.mkdir(parents=True, exist_ok=True)
    earlier: dict[str, Checked] = {}
    if ledger.is_file():
        with open(ledger, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = Checked(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a torn last line of a stopped import: checked again
                earlier[entry.key] = entry
    with open(ledger, "a", encoding="utf-8") as sink:
        for pair in pairs:
            stamp = stamp_of(pair, value_map, taxonomy)
            entry = earlier.pop(pair.key, None)
            if entry is None or entry.stamp != stamp or entry.image != str(pair.image) or entry.split != pair.split:
                entry = check_pair(pair, value_map, len(taxonomy), stamp)
                sink.write(json.dumps(asdict(entry)) + "\n")
                sink.flush()
            on_pair()
            yield entry


class ImportedRecords(Mapping[str, TileRecord]):
    """The good pairs as tile records, made when the shard writer asks for one: the importer holds a
    few fields per pair, never a record or pixels."""

    def __init__(self, good: dict[str, Checked], source: Path, layout: str) -> None:
        self.good, self.source, self.layout = good, source, layout

    def __getitem__(self, key: str) -> TileRecord:
        entry = self.good[key]
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
            provenance={"imported_from": str(self.source), "layout": self.layout},
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.good)

    def __len__(self) -> int:
        return len(self.good)


@dataclass
class ImportSummary:
    imported: int
    quarantined: int
    unmatched: int
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
    on_total: Callable[[int], None] = lambda total: None,
    on_pair: Callable[[], None] = lambda: None,
) -> ImportSummary:
    """Pair, check and shard `source` into `out_dir` (shards/, manifest.json, import/); ShardImportError
    when nothing can be imported, with the reasons written first."""
    from pipeline.shards import write_shards

    value_map = value_map or ValueMap.identity(taxonomy)
    pairs, unmatched = find_pairs(source, layout, *folders)
    if not pairs:
        raise ShardImportError(
            f"{source}: no image has a mask of the same name ({len(unmatched)} files without a partner)"
        )
    on_total(len(pairs))
    good: dict[str, Checked] = {}
    bad: list[Checked] = []
    for entry in checked_pairs(out_dir, pairs, value_map, taxonomy, on_pair):
        if entry.reason is None:
            good[entry.key] = entry
        else:
            bad.append(entry)
    quarantine_file = write_quarantine(out_dir, bad, unmatched)
    if not good:
        raise ShardImportError(
            f"{source}: none of the {len(pairs)} pairs could be imported; reasons in {quarantine_file}"
        )

    def load(record: TileRecord) -> tuple[np.ndarray, np.ndarray]:
        entry = good[record.key]
        return read_image(Path(entry.image)), value_map.apply(read_mask(Path(entry.mask)))

    splits = None
    if layout == "official":
        splits = {}
        for key, entry in good.items():
            splits.setdefault(entry.split, []).append(key)
    manifest = write_shards(
        out_dir,
        ImportedRecords(good, source.resolve(), layout),
        load,
        taxonomy.names,
        taxonomy.version,
        config or ShardConfig(),
        build_config={"imported_from": str(source.resolve()), "layout": layout, "value_map": value_map.text},
        quarantined=len(bad),
        inputs=[source.resolve()],
        tile_counts={"imported": len(good), "quarantined": len(bad), "unmatched": len(unmatched)},
        splits=splits,
    )
    return ImportSummary(len(good), len(bad), len(unmatched), manifest, quarantine_file)


def write_quarantine(out_dir: Path, bad: list[Checked], unmatched: list[str]) -> Path:
    path = out_dir / QUARANTINE
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            for entry in bad:
                handle.write(
                    json.dumps({"key": entry.key, "image": entry.image, "mask": entry.mask, "reason": entry.reason})
                    + "\n"
                )
            for line in unmatched:
                handle.write(json.dumps({"key": None, "reason": line}) + "\n")
    return path


__all__ = [
    "LAYOUTS",
    "Checked",
    "ShardImportError",
    "ImportSummary",
    "ImportedRecords",
    "Pair",
    "ValueMap",
    "check_pair",
    "checked_pairs",
    "find_pairs",
    "import_pairs",
    "read_image",
    "read_mask",
    "write_quarantine",
]
