"""WebDataset shards and their manifest: the contract between the build and the trainer.

    OUT/shards/{split}-{000000}.tar   samples {key}.{jpg,png,webp}, {key}.mask.png, {key}.json
    OUT/manifest.json                 taxonomy (names, version), per-shard count and sha256, statistics

Byte-identical output for identical inputs: samples in a seeded random order (a hash of (seed, key), so
neighbouring tiles of one raster, which share categories, land in different shards and a trainer's
batches mix them as a full permutation would), tar entries with fixed mtime, owner and mode, images
encoded with fixed settings, JSON with sorted keys, and no timestamps in the manifest. The split is a
deterministic hash of (seed, key), stratified by domain.

Image bytes are never a second lossy generation by default: a tile that is a whole JPEG or PNG source image
keeps the source file's bytes (when they decode to exactly the tile's pixels, so EXIF-rotated or palette
files are re-encoded); any other tile is stored as lossless WebP (exact pixels; at method 0, on 1024 px NAIP
tiles, a tenth smaller than PNG level 6 and six times faster to encode: `benchmarks/bench_gpu_box.py
--webp`). `lossless: false` stores those as JPEG at `jpeg_quality` instead, an explicit lossy choice.

Writing is assembly where it can be (issue 32): samples are loaded and encoded `workers` at a time on
threads (Pillow releases the GIL while it encodes) and written in order, so the shards stay
deterministic; a `SampleCache` keeps each encoded image and mask part under a digest of what made
it, so a build that encoded a tile while annotating it, or a rebuild with nothing changed, reads the
bytes back instead of reading the raster and encoding again.

Shards are meant to be published, so by default a sample's JSON carries no private field of the
machine or the people that made it (`public_record`): source paths relative to the build's inputs
(the file name when not under one) and reviewers as keyed pseudonyms. `keep_private_fields: true`
keeps the raw values.

Reading trusts no name in a tar: a member whose name or sample key could leave a folder it is
written to (`../x`, `/x`, control characters), or whose key repeats an earlier sample of the shard,
is reported by `verify_shards` and left out by every export (`read_samples`).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import secrets
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge, Interval
from PIL import Image

from ovrsis.errors import ShardError
from pipeline.build.batching import in_order
from pipeline.dataset.records import TileRecord
from pipeline.files.atomic import atomic_path, file_sha256
from pipeline.files.layout import manifest_file, shards_dir
from pipeline.files.safe_names import UnsafeName, confined_name, confined_path
from taxonomy.masks import IGNORE_INDEX as IGNORE
from taxonomy.masks import values_outside

MANIFEST_SCHEMA_VERSION = 1
# Lossless WebP effort (issue 32, measured on 1024 px NAIP tiles, benchmarks/bench_gpu_box.py --webp): method 0
# encodes in a quarter of method 1's time (53 vs 212 ms) for 8 % more bytes (1.50 vs 1.39 MB); exact either way.
WEBP_SETTINGS = {"lossless": True, "quality": 25, "method": 0, "exact": True}
MASK_PNG_LEVEL = 6
IMAGE_EXTENSIONS = ("jpg", "png", "webp")  # a sample holds exactly one image part


@dataclass(frozen=True)
class ShardConfig:
    """How samples go into shards; also the `shards:` section of the build YAML, whose validation
    (pydantic) reads the bounds annotated here."""

    __pydantic_config__ = {"extra": "forbid"}  # the build YAML section (pipeline/build/config.py): a typo is an error

    max_samples: Annotated[int, Ge(1)] = 1000
    max_bytes: Annotated[int, Ge(1 << 16)] = 1 << 30
    lossless: bool = True  # tiles that are not whole JPEG/PNG sources: lossless WebP; False: JPEG at jpeg_quality
    jpeg_quality: Annotated[int, Interval(ge=1, le=100)] = 95
    val_fraction: Annotated[float, Interval(ge=0.0, lt=1.0)] = 0.1
    seed: int = 0
    keep_private_fields: bool = False  # True: absolute source paths and reviewer addresses in each sample's JSON


@dataclass
class Sample:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8
    record: dict


def split_keys(records: Iterable[TileRecord], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic train/val split, stratified by domain: within each domain the keys with the
    smallest sha256(seed:key) go to val, so adding tiles never reshuffles existing ones much."""
    by_domain: dict[str, list[str]] = defaultdict(list)
    for record in records:
        by_domain[record.domain.name if record.domain else "unknown"].append(record.key)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for domain in sorted(by_domain):
        keys = sorted(by_domain[domain], key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
        n_val = int(round(val_fraction * len(keys)))
        splits["val"].extend(keys[:n_val])
        splits["train"].extend(keys[n_val:])
    return {name: sorted(keys) for name, keys in splits.items()}


def shuffled_keys(keys: Sequence[str], seed: int) -> list[str]:
    """The order samples are written in: by sha256(seed:order:key), random but independent of the input order."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:order:{k}".encode()).hexdigest())


def write_shards(
    out_dir: Path,
    records: Sequence[TileRecord] | Mapping[str, TileRecord],
    load_sample: Callable[[TileRecord], tuple[np.ndarray, np.ndarray]],
    taxonomy_names: Sequence[str],
    taxonomy_version: str,
    config: ShardConfig = ShardConfig(),
    build_config: dict | None = None,
    quarantined: int = 0,
    audit_round: int | str = 0,
    inputs: Sequence[Path] = (),
    tile_counts: dict | None = None,
    *,
    cache: SampleCache | None = None,
    load_mask: Callable[[TileRecord], np.ndarray] | None = None,
    workers: int = 1,
    splits: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Write every split's shards and the manifest; returns the manifest. `records` may be a mapping
    by key that reads each record when asked (pipeline.dataset.record_store.RecordIndex), so a build never
    holds the records it shards. `inputs` (the build's input files and folders) are what source paths
    are made relative to, unless `config.keep_private_fields` (`public_record`). `tile_counts`
    (pipeline.dataset.selection.TileCounts.as_dict) says how many of the build's tiles were left out and why.
    With a `cache`, an image part found there is used as it is and only the mask is loaded
    (`load_mask`, else `load_sample`); `workers` samples are loaded and encoded at once. `splits`
    (split name -> keys) replaces the build's split, as an import of a released dataset needs."""
    import webdataset as wds  # imports torch: only where shards are written or read

    if isinstance(records, Mapping):
        by_key = records
    else:
        by_key = {r.key: r for r in records}
        if len(by_key) != len(records):
            raise ShardError("duplicate tile keys among the records to shard")
    shard_dir = shards_dir(out_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob("*.tar"):
        stale.unlink()
    # a build splits by domain (`split_keys`); an import keeps the splits its source was released with
    splits = split_keys(by_key.values(), config.val_fraction, config.seed) if splits is None else splits
    manifest_splits = {}
    pixels: Counter = Counter()
    images: Counter = Counter()
    domains: Counter = Counter()
    formats: set[str] = set()
    publish = _publisher(out_dir, inputs, config.keep_private_fields)
    loader = _SampleLoader(by_key, load_sample, load_mask, cache, config, len(taxonomy_names), publish)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="shard-encode") as pool:
        for split, keys in splits.items():
            keys = shuffled_keys(keys, config.seed)
            with _ShardStream(shard_dir, split, config, wds) as stream:
                # loaded and encoded `workers` at a time, written in order; at most 2 x workers held
                for encoded, counts, domain in in_order(keys, lambda key: pool.submit(loader, key), 2 * workers):
                    stream.add(encoded)
                    formats.update(set(encoded) & set(IMAGE_EXTENSIONS))
                    for value in np.flatnonzero(counts).tolist():
                        if value != IGNORE:
                            pixels[taxonomy_names[value]] += int(counts[value])
                            images[taxonomy_names[value]] += 1
                    domains[domain] += 1
            manifest_splits[split] = {"samples": len(keys), "shards": stream.shards}
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "taxonomy": {"names": list(taxonomy_names), "version": taxonomy_version},
        "image_format": formats.pop() if len(formats) == 1 else "mixed",  # per sample: its own extension
        "splits": manifest_splits,
        "categories": {name: {"pixels": pixels[name], "images": images[name]} for name in taxonomy_names},
        "domains": dict(sorted(domains.items())),
        "quarantined_tiles": quarantined,
        **({"tiles": tile_counts} if tile_counts is not None else {}),
        "build_config": (build_config or {})
        if config.keep_private_fields
        else public_paths(build_config or {}, inputs),
        "audit_round": audit_round,
    }
    with atomic_path(manifest_file(out_dir)) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


class _SampleLoader:
    """One sample ready to write: (its parts, its mask's count of each value, its domain). Called on
    the encoding threads; holds nothing between samples."""

    def __init__(
        self,
        by_key: Mapping[str, TileRecord],
        load_sample: Callable[[TileRecord], tuple[np.ndarray, np.ndarray]],
        load_mask: Callable[[TileRecord], np.ndarray] | None,
        cache: SampleCache | None,
        config: ShardConfig,
        n_classes: int,
        publish: Callable[[dict], dict],
    ) -> None:
        self.by_key, self.load_sample, self.load_mask, self.cache = by_key, load_sample, load_mask, cache
        self.config, self.n_classes, self.publish = config, n_classes, publish

    def __call__(self, key: str) -> tuple[dict, np.ndarray, str]:
        record = self.by_key[key]
        _check_key(key)
        cached = self.cache.image(record) if self.cache is not None else None
        if cached is not None:
            image = None
            mask = self.load_mask(record) if self.load_mask is not None else self.load_sample(record)[1]
        else:
            image, mask = self.load_sample(record)
        counts = self._counts(key, mask)
        window = record.source.window
        shape = image.shape[:2] if image is not None else (window.height, window.width)  # a cached part: its tile's
        if shape != mask.shape:
            raise ShardError(f"{key}: image {shape} and mask {mask.shape} differ in size")
        if cached is None:
            cached = image_bytes_of(image, record, self.config)
            if self.cache is not None:
                self.cache.store(self.cache.image_key(record), cached)
        extension, image_bytes = cached
        encoded = {
            "__key__": key,
            extension: image_bytes,
            "mask.png": self.cache.mask_png(mask) if self.cache is not None else encode_mask(mask),
            "json": json.dumps(
                self.publish(record.model_dump(mode="json")), sort_keys=True, separators=(",", ":")
            ).encode(),
        }
        domain = record.domain.name if record.domain else "unknown"
        return encoded, counts, domain

    def _counts(self, key: str, mask: np.ndarray) -> np.ndarray:
        """Pixels per mask value (index = value), ShardError for a value outside the taxonomy. A uint8
        mask is checked from its counts: one pass over a 1024 px mask instead of a sort as well."""
        if mask.dtype == np.uint8:
            counts = np.bincount(mask.ravel(), minlength=256)
            bad = [v for v in np.flatnonzero(counts).tolist() if v >= self.n_classes and v != IGNORE]
        else:
            bad = values_outside(mask, self.n_classes)
        if bad:
            raise ShardError(f"{key}: mask values {bad} outside the taxonomy's {self.n_classes} classes")
        return counts if mask.dtype == np.uint8 else np.bincount(mask.ravel().astype(np.intp), minlength=256)


def _publisher(out_dir: Path, inputs: Sequence[Path], keep_private: bool) -> Callable[[dict], dict]:
    """What a record's JSON goes through before it enters a shard: nothing when private fields are kept."""
    if keep_private:
        return lambda record: record
    pseudonyms = Pseudonyms(out_dir)
    return lambda record: public_record(record, inputs, pseudonyms)


class _ShardStream:
    """Samples written into `{split}-{index:06d}.tar` as they come, a new shard once the current one
    holds `max_samples` or the next sample would take it past `max_bytes` of payload: a shard is never
    held in memory (a 1 GiB shard of 1024 px tiles would be). Each shard is renamed into place when
    it is closed; a failure leaves no partial shard."""

    def __init__(self, shard_dir: Path, split: str, config: ShardConfig, wds) -> None:
        self.shard_dir, self.split, self.config, self.wds = shard_dir, split, config, wds
        self.shards: list[dict] = []
        self._stack: ExitStack | None = None
        self._path: Path | None = None
        self._samples = self._bytes = 0

    def add(self, encoded: dict) -> None:
        size = sum(len(v) for k, v in encoded.items() if k != "__key__")
        if self._samples and (self._samples >= self.config.max_samples or self._bytes + size > self.config.max_bytes):
            self._close()
        if self._stack is None:
            self._open()
        self._tar.write(encoded)
        self._samples += 1
        self._bytes += size

    def _open(self) -> None:
        self._path = self.shard_dir / f"{self.split}-{len(self.shards):06d}.tar"
        self._stack = ExitStack()
        temporary = self._stack.enter_context(atomic_path(self._path))
        self._tar = self._stack.enter_context(
            self.wds.TarWriter(str(temporary), encoder=False, mtime=0, user="ovrsis", group="ovrsis", mode=0o444)
        )

    def _close(self) -> None:
        self._stack.close()  # closes the tar, then renames it into place
        self.shards.append(
            {
                "name": self._path.name,
                "samples": self._samples,
                "bytes": self._path.stat().st_size,
                "sha256": file_sha256(self._path),
            }
        )
        self._stack, self._samples, self._bytes = None, 0, 0

    def __enter__(self) -> _ShardStream:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self._stack is None:
            return
        if error is None:
            self._close()
        else:
            self._stack.__exit__(kind, error, trace)  # the temporary is deleted


def _check_key(key: str) -> None:
    try:
        confined_name(key, "tile key")  # a reader would refuse the sample: never write one
    except UnsafeName as error:
        raise ShardError(str(error)) from None
    if "." in key:
        raise ShardError(f"tile key {key!r} contains '.', which WebDataset reads as an extension")


def image_bytes_of(image: np.ndarray, record: TileRecord, config: ShardConfig) -> tuple[str, bytes]:
    """(extension, bytes) of a tile's image part: the source's own bytes or the configured encoding."""
    return source_image_bytes(image, record) or encode_image(image, config)


def encode_mask(mask: np.ndarray) -> bytes:
    """A mask part: PNG at level 6, as the merge stage writes masks/KEY.png."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=MASK_PNG_LEVEL)
    return buffer.getvalue()


def encode_image(image: np.ndarray, config: ShardConfig) -> tuple[str, bytes]:
    """Lossless WebP (`exact`: pixels kept bit for bit; `WEBP_SETTINGS`), or JPEG when `lossless` is off."""
    buffer = io.BytesIO()
    if config.lossless:
        Image.fromarray(image).save(buffer, format="WEBP", **WEBP_SETTINGS)
        return "webp", buffer.getvalue()
    Image.fromarray(image).save(buffer, format="JPEG", quality=config.jpeg_quality, subsampling=0)
    return "jpg", buffer.getvalue()


class SampleCache:
    """Encoded sample parts by content: `ROOT/KK/DIGEST.PART`, each written once (atomically) and read
    back by any build whose tile would encode to the same bytes.

    An image part's digest covers what decides its bytes without reading a pixel: the tile's whole
    `source` (path, file sha256, window, bands, stretch, nodata), the shard encoding settings, the
    Pillow version and `context` (the build's band rule), so a changed input or setting is a miss,
    never stale bytes. A mask part's digest is that of the mask's values. A file that cannot be read
    is a miss and is written again."""

    VERSION = "samples-1"

    def __init__(self, root: Path, config: ShardConfig, context: str = "") -> None:
        import PIL

        self.root, self.config = Path(root), config
        self.used: set[str] = (
            set()
        )  # keys read or written by this process: what the shards hold (cache prune keeps them)
        settings = {"webp": WEBP_SETTINGS, "lossless": config.lossless, "jpeg_quality": config.jpeg_quality}
        self._salt = json.dumps([self.VERSION, PIL.__version__, settings, context], sort_keys=True)

    def image_key(self, record: TileRecord) -> str:
        source = record.source.model_dump_json()
        return hashlib.sha256(f"{self._salt}\n{source}".encode()).hexdigest() + ".image"

    def image(self, record: TileRecord) -> tuple[str, bytes] | None:
        """(extension, bytes) of the tile's cached image part, or None on a miss."""
        data = self._read(self.image_key(record))
        if data is None:
            return None
        extension, _, image_bytes = data.partition(b"\n")
        if extension.decode("ascii", "replace") not in IMAGE_EXTENSIONS or not image_bytes:
            return None  # damaged: a miss, written again
        return extension.decode(), image_bytes

    def has_image(self, record: TileRecord) -> bool:
        """Whether the tile's image part is kept, by its file alone (a 1024 px part is 1.5 MB: a rebuild
        does not read it twice). Writes are atomic; a damaged file is still found by `image`, where
        `write_shards` treats it as a miss."""
        path = self._path(self.image_key(record))
        try:
            return path.stat().st_size > len("webp\n")
        except OSError:
            return False

    def store_image(self, record: TileRecord, image: np.ndarray) -> None:
        """Encode the tile's image part and keep it (the build's write step, while the pixels are in memory)."""
        self.store(self.image_key(record), image_bytes_of(image, record, self.config))

    def store(self, key: str, part: tuple[str, bytes]) -> None:
        extension, data = part
        self._write(key, extension.encode() + b"\n" + data)

    def mask_png(self, mask: np.ndarray) -> bytes:
        """The mask part's PNG bytes, encoded on a miss."""
        digest = hashlib.blake2b(mask.tobytes(), digest_size=20, person=b"ovrsis-mask")
        digest.update(repr(mask.shape).encode())
        key = f"{digest.hexdigest()}.mask"
        data = self._read(key)
        if data is None:
            data = encode_mask(mask)
            self._write(key, data)
        return data

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _read(self, key: str) -> bytes | None:
        try:
            data = self._path(key).read_bytes()
        except OSError:
            return None
        self.used.add(key)
        return data

    def _write(self, key: str, data: bytes) -> None:
        self.used.add(key)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)


def source_image_bytes(image: np.ndarray, record: TileRecord) -> tuple[str, bytes] | None:
    """The source file's own bytes when the tile is that whole JPEG/PNG image and they decode (as the
    readers decode them) to exactly the tile's pixels; None otherwise."""
    source, window = record.source, record.source.window
    whole = (window.row_off, window.col_off, window.height, window.width) == (
        0,
        0,
        source.raster_height,
        source.raster_width,
    )
    path = Path(source.path)
    if not whole or image.shape[:2] != (window.height, window.width) or not path.is_file():
        return None
    with open(path, "rb") as handle:  # a GeoTIFF or other raster is never read whole for nothing
        head = handle.read(8)
    extension = "jpg" if head[:3] == b"\xff\xd8\xff" else "png" if head == b"\x89PNG\r\n\x1a\n" else None
    if extension is None:
        return None
    data = path.read_bytes()
    try:
        same = np.array_equal(decode_image(data), image)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (extension, data) if same else None


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8, as every reader of the shards decodes an image part."""
    with Image.open(io.BytesIO(data)) as opened:
        return np.asarray(opened.convert("RGB"))


# --- what a published sample carries -------------------------------------------------------------

PSEUDONYM_KEY = Path("audit") / "pseudonym.key"  # in the output folder, beside the ledger
_PSEUDONYM = re.compile(r"reviewer-[0-9a-f]{12}")


class Pseudonyms:
    """Reviewer -> `reviewer-` + 12 hex digits of HMAC-SHA256(the output folder's key, reviewer).

    Keyed because an e-mail address is guessable: a plain hash of it is reversed by hashing candidate
    addresses, a keyed one is not without the key. The key lives in OUT/audit/ beside the ledger, which
    holds the addresses anyway, so it reveals nothing more there. One key per output folder: a
    reviewer keeps one pseudonym across rebuilds and exports of the folder (per-reviewer statistics
    still work) and gets another in another folder's data; an index per build would instead renumber
    reviewers whenever the ledger gains one. Made on first use: a build without reviews writes none."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / PSEUDONYM_KEY
        self._key: bytes | None = None

    def __call__(self, reviewer: object) -> object:
        if reviewer is None or (isinstance(reviewer, str) and _PSEUDONYM.fullmatch(reviewer)):
            return reviewer  # no reviewer, or already a pseudonym (shards an export reads again)
        digest = hmac.new(self._load(), str(reviewer).encode(), hashlib.sha256).hexdigest()
        return f"reviewer-{digest[:12]}"

    def _load(self) -> bytes:
        if self._key is None:
            if not self.path.is_file():
                _create_key(self.path)
            self._key = self.path.read_bytes().strip()
        return self._key


def _create_key(path: Path) -> None:
    """A random key only its owner can read, linked into place so that two writers end up with one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another writer made it first: theirs is the key
    finally:
        temporary.unlink()


def public_path(path: str, inputs: Sequence[Path]) -> str:
    """An absolute path relative to the folder holding the input it lies under (`imagery/a/b.tif`
    for input `/data/imagery`; the input's own name tells two inputs apart), else its file name. A
    relative path without `..` is kept: it is already relative (to an input or the output folder)."""
    candidate = Path(os.path.normpath(path))
    if not candidate.is_absolute() and ".." not in Path(path).parts:
        return path
    for root in inputs:
        root = Path(os.path.normpath(root))
        if root.is_absolute() and candidate.is_relative_to(root):
            return candidate.relative_to(root.parent).as_posix()
    return candidate.name


def public_paths(value: object, inputs: Sequence[Path]) -> object:
    """`value` (JSON) with every string that is an absolute path made public (`public_path`)."""
    if isinstance(value, dict):
        return {name: public_paths(item, inputs) for name, item in value.items()}
    if isinstance(value, list):
        return [public_paths(item, inputs) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return public_path(value, inputs)
    return value


def public_record(record: dict, inputs: Sequence[Path], pseudonyms: Pseudonyms) -> dict:
    """A record (as JSON) fit to publish: absolute paths in `source`, `provenance` and the captions'
    `model` (a local model folder names the user's home) made public, and every reviewer replaced by
    its pseudonym. Other fields are kept: free text such as a caption is never rewritten."""
    public = {**record}
    for field in ("source", "provenance"):
        if field in public:
            public[field] = public_paths(public[field], inputs)
    if isinstance(public.get("captions"), list):
        public["captions"] = [
            _replaced(caption, "model", lambda m: public_paths(m, inputs)) for caption in public["captions"]
        ]
    if isinstance(public.get("audit"), list):
        public["audit"] = [_replaced(decision, "reviewer", pseudonyms) for decision in public["audit"]]
    if "review" in public:
        public["review"] = _replaced(public["review"], "reviewer", pseudonyms)
    return public


def _replaced(entry: object, field: str, change: Callable[[object], object]) -> object:
    """`entry` with `field` changed, where it is an object holding that field (a record read from a
    tar may hold anything)."""
    if not isinstance(entry, dict) or field not in entry:
        return entry
    return {**entry, field: change(entry[field])}


# --- reading -------------------------------------------------------------------------------------


def read_manifest(out_dir: Path) -> dict:
    path = manifest_file(out_dir)
    if not path.is_file():
        raise ShardError(f"{path}: no manifest (is {out_dir} a build output folder?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ShardError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ShardError(f"{path}: schema version {version}, this reader knows {MANIFEST_SCHEMA_VERSION}")
    _check_shard_names(manifest, path)
    return manifest


def _check_shard_names(manifest: dict, path: Path) -> None:
    """Split and shard names become paths (OUT/shards/NAME, an export's DEST/SPLIT/): each must be one
    plain file name, or the manifest is refused."""
    try:
        for split, info in manifest["splits"].items():
            confined_name(split, "split name")
            for shard in info["shards"]:
                confined_name(shard["name"], f"split {split}: shard name")
    except UnsafeName as error:
        raise ShardError(f"{path}: {error}") from None
    except (KeyError, TypeError, AttributeError) as error:
        raise ShardError(f"{path}: not a shard manifest (splits: {error!r})") from None


def member_key(member: tarfile.TarInfo) -> tuple[str, str]:
    """(sample key, part) of a shard member, as the writer made them (the key is the name before its
    first '.'); UnsafeName when the member is not a plain file, or its name or key is not one plain
    file name: exports join keys to their folders, and `../x` or `/x` would land outside them."""
    if not member.isfile():
        raise UnsafeName(f"member {member.name!r} is not a regular file")
    key, _, part = confined_name(member.name, "member name").partition(".")
    return confined_name(key, "sample key"), part


def read_samples(
    path: Path, skipped: list[str], seen: set[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {part: bytes}) per sample of one shard, in its order (a sample's parts are adjacent), one
    sample in memory at a time. A member with an unsafe name (`member_key`), a sample whose key repeats
    an earlier sample (of the shard, or of the shards read before with the same `seen` set: an export
    passes one per split folder), or a part a sample already has (each would overwrite what an export
    wrote for the first) is left out and named in `skipped` with the shard and the member."""
    seen = set() if seen is None else seen
    key, parts = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            try:
                name_key, part = member_key(member)
                if name_key != key and name_key in seen:
                    raise UnsafeName(f"sample key {name_key!r} repeats an earlier sample")
                if name_key == key and part in parts:
                    raise UnsafeName(f"sample {name_key!r} has a second {part!r} part")
            except UnsafeName as error:
                skipped.append(f"{path}: member {member.name!r} left out: {error}")
                continue
            if name_key != key and parts:
                yield key, parts
                parts = {}
            key = name_key
            seen.add(key)
            parts[part] = tar.extractfile(member).read()
    if parts:
        yield key, parts


def verify_shards(out_dir: Path, check_masks: bool = True) -> list[str]:
    """Problems found (empty list = all good): missing shards, checksum or count mismatches, members
    with unsafe names or repeated keys (`read_samples`), bad mask values."""
    manifest = read_manifest(out_dir)
    n_classes = len(manifest["taxonomy"]["names"])
    problems: list[str] = []
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            path = shards_dir(out_dir) / shard["name"]
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            if file_sha256(path) != shard["sha256"]:
                problems.append(f"{path}: sha256 differs from the manifest (corrupt or replaced)")
                continue
            count = 0
            for key, parts in read_samples(path, problems):
                count += 1
                if check_masks and "mask.png" in parts:
                    mask = np.asarray(Image.open(io.BytesIO(parts["mask.png"])))
                    if bad := values_outside(mask, n_classes):
                        problems.append(f"{path}: sample {key} has mask values {bad} outside the taxonomy")
            if count != shard["samples"]:
                problems.append(f"{path}: {count} samples, manifest says {shard['samples']}")
    return problems


class ShardReader:
    """Reads a build's shards after checking the manifest against what the caller trains on.

    `on_corrupt`: "error" raises on a missing shard or a checksum mismatch; "skip" leaves such shards
    out (listed in `corrupt`, with the reason) so a long training run is not lost to one bad file."""

    def __init__(
        self,
        out_dir: Path,
        expected_names: Sequence[str] | None = None,
        verify_checksums: bool = True,
        on_corrupt: str = "error",
    ) -> None:
        self.out_dir = out_dir
        self.manifest = read_manifest(out_dir)
        self.corrupt: dict[str, str] = {}
        names = self.manifest["taxonomy"]["names"]
        if expected_names is not None and list(expected_names) != names:
            missing = [n for n in expected_names if n not in names]
            raise ShardError(
                f"{out_dir}: the shards were built with taxonomy {self.manifest['taxonomy']['version']} "
                f"({len(names)} classes), not the {len(expected_names)} classes configured"
                + (f"; missing: {missing[:5]}" if missing else "; same names, different order")
            )
        if verify_checksums:
            for info in self.manifest["splits"].values():
                for shard in info["shards"]:
                    path = shards_dir(out_dir) / shard["name"]
                    problem = (
                        "missing"
                        if not path.is_file()
                        else "sha256 differs from the manifest"
                        if file_sha256(path) != shard["sha256"]
                        else None
                    )
                    if problem and on_corrupt != "skip":
                        raise ShardError(f"{path}: {problem}")
                    if problem:
                        self.corrupt[str(path)] = problem

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["taxonomy"]["names"])

    def shard_paths(self, split: str) -> list[str]:
        if split not in self.manifest["splits"]:
            raise ShardError(f"{self.out_dir}: no split {split!r} (have {sorted(self.manifest['splits'])})")
        paths = [str(shards_dir(self.out_dir) / s["name"]) for s in self.manifest["splits"][split]["shards"]]
        return [path for path in paths if path not in self.corrupt]

    def split_bytes(self, split: str) -> int:
        """Bytes of the split's readable shards (what a buffer holding every sample would hold)."""
        shards = self.manifest["splits"].get(split, {}).get("shards", [])
        return sum(s["bytes"] for s in shards if str(shards_dir(self.out_dir) / s["name"]) not in self.corrupt)

    def sample_count(self, split: str) -> int:
        """Samples in the split's readable shards (corrupt ones left out)."""
        shards = self.manifest["splits"].get(split, {}).get("shards", [])
        return sum(s["samples"] for s in shards if str(shards_dir(self.out_dir) / s["name"]) not in self.corrupt)

    def samples(self, split: str = "train") -> Iterator[Sample]:
        """Samples in shard order, decoded to arrays."""
        import webdataset as wds  # imports torch: only where shards are written or read

        paths = self.shard_paths(split)
        if not paths:
            return
        # every sample, whatever process asks (webdataset would refuse to guess a split under torchrun)
        for raw in wds.WebDataset(paths, shardshuffle=False, empty_check=False, nodesplitter=None):
            yield decode_sample(raw)


def image_part(raw: dict) -> str:
    """The extension of a raw sample's image part."""
    found = [extension for extension in IMAGE_EXTENSIONS if extension in raw]
    if len(found) != 1:
        raise ShardError(
            f"sample {raw['__key__']}: {'no' if not found else 'more than one'} "
            f"image part ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return found[0]


def decode_sample(raw: dict) -> Sample:
    key = raw["__key__"]
    image = decode_image(raw[image_part(raw)])
    try:
        mask = np.asarray(Image.open(io.BytesIO(raw["mask.png"])))
        record = json.loads(raw["json"])
    except KeyError as error:
        raise ShardError(f"sample {key}: missing part {error}") from error
    return Sample(key=key, image=image, mask=mask, record=record)


def export_official(
    out_dir: Path, destination: Path, splits: Iterable[str] = ("train", "val"), skipped: list[str] | None = None
) -> int:
    """The folder layout the authors' Pi-Seg / CAT-Seg code reads: {split}/img/*.jpg, {split}/mask/*.png;
    returns the samples written. JPEG images are copied byte for byte; PNG and WebP images are encoded
    to JPEG at quality 95. Samples `read_samples` leaves out (unsafe names, repeated keys) and samples
    without an image or mask are named in `skipped`: nothing is written for them."""
    reader = ShardReader(out_dir)
    skipped = [] if skipped is None else skipped
    count = 0
    for split in splits:
        if split not in reader.manifest["splits"] or not reader.shard_paths(split):
            continue
        images, masks = destination / split / "img", destination / split / "mask"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        written: set[str] = set()  # one file per key in the split's folders, across its shards
        for shard in reader.shard_paths(split):
            for key, parts in read_samples(Path(shard), skipped, written):
                try:
                    _write_official(images, masks, key, parts)
                except (ShardError, UnsafeName) as error:
                    skipped.append(f"{shard}: sample {key} left out: {error}")
                    continue
                count += 1
    return count


def _write_official(images: Path, masks: Path, key: str, parts: dict[str, bytes]) -> None:
    """One sample's image (as JPEG) and mask; each path confined to its folder, checked before
    anything is written (a file planted there as a link to elsewhere is refused, not followed)."""
    extension = image_part({"__key__": key, **parts})
    if "mask.png" not in parts:
        raise ShardError("no mask.png part")
    image_path = confined_path(images, f"{key}.jpg", "sample key")
    mask_path = confined_path(masks, f"{key}.png", "sample key")
    if extension == "jpg":
        image_path.write_bytes(parts["jpg"])
    else:
        Image.fromarray(decode_image(parts[extension])).save(image_path, format="JPEG", quality=95)
    mask_path.write_bytes(parts["mask.png"])
