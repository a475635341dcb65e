"""Versioned releases of a build (issue 33, item 4): a round frozen under a version a user can cite,
and what changed between two of them.

    OUT/releases/VERSION/
        release.json     version, digest, sizes, the taxonomy, the ledger's sha256, the build configuration
        manifest.json    the build's manifest, as it was
        shards/          the shards (hard links where the disk allows, else copies), checked against it
        tiles.jsonl      per sample: key, split, the mask part's sha256, pixels per category
        reviews.jsonl    the identity of every review the ledger held (project, task, annotation, time, tile)
        README.md        the dataset card: sizes, classes, domains, balance, Table II, how it was made, licence

The digest is the sha256 of the manifest (which holds every shard's sha256) and the ledger's sha256:
two releases with one digest hold the same bytes and were made from the same reviews, and a build
rebuilt from the recorded inputs (imagery, configuration, the output's `audit/` folder, whose
pseudonym key names the reviewers in the shards) gives the same digest. The audit (a layer above)
passes in the review identities and its Table II; nothing here reads the ledger's reviews.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from ovrsis.errors import ShardError
from pipeline.dataset.shards import read_manifest, read_samples
from pipeline.files.atomic import file_sha256
from pipeline.files.layout import manifest_file, releases_dir, shards_dir
from pipeline.files.safe_names import confined_path
from pipeline.raster.outputs import mask_digest
from taxonomy.masks import IGNORE_INDEX

RELEASE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReleaseInputs:
    """What the audit knows of a round: the reviews' identities, the ledger's sha256, Table II."""

    reviews: list[dict] = field(default_factory=list)
    ledger_sha256: str | None = None
    audit_markdown: str | None = None


@dataclass
class ReleaseDiff:
    """Release B against release A."""

    added: list[str] = field(default_factory=list)  # tile keys in B only
    removed: list[str] = field(default_factory=list)  # tile keys in A only
    categories_changed: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # key -> gained / lost
    pixels_changed: dict[str, dict[str, int]] = field(default_factory=dict)  # category -> gained / lost pixels
    # (pixel by pixel in the tiles of both; every labelled pixel of a tile added or removed)
    masks_changed: list[str] = field(default_factory=list)  # tiles in both whose mask differs
    reviews_added: list[dict] = field(default_factory=list)


def release_digest(manifest_sha256: str, ledger_sha256: str | None) -> str:
    return hashlib.sha256(f"{manifest_sha256}\n{ledger_sha256 or 'no ledger'}\n".encode()).hexdigest()


def create_release(
    out: Path, version: str, inputs: ReleaseInputs, licence: str = "unspecified", balance_markdown: str | None = None
) -> Path:
    """Freeze the build in OUT as OUT/releases/VERSION; refuses a version that exists (a release never
    changes) or shards that do not match their manifest. Written into a temporary folder and renamed."""
    folder = confined_path(releases_dir(out), version, "release version")
    if folder.exists():
        raise ShardError(f"{folder}: release {version!r} exists; a release never changes (choose another version)")
    manifest = read_manifest(out)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".release.", suffix=".part", dir=folder.parent))
    try:
        (staging / "shards").mkdir()
        shutil.copyfile(manifest_file(out), staging / "manifest.json")
        tiles = _freeze_shards(out, manifest, staging / "shards")
        _write_lines(staging / "tiles.jsonl", tiles)
        _write_lines(staging / "reviews.jsonl", sorted(inputs.reviews, key=_review_order))
        manifest_sha256 = file_sha256(staging / "manifest.json")
        release = {
            "schema_version": RELEASE_SCHEMA_VERSION,
            "version": version,
            "digest": release_digest(manifest_sha256, inputs.ledger_sha256),
            "manifest_sha256": manifest_sha256,
            "ledger_sha256": inputs.ledger_sha256,
            "taxonomy": manifest["taxonomy"],
            "samples": {split: info["samples"] for split, info in manifest["splits"].items()},
            "reviews": len(inputs.reviews),
            "licence": licence,
            "build_config": manifest.get("build_config"),
        }
        (staging / "release.json").write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
        (staging / "README.md").write_text(_card(release, manifest, inputs, balance_markdown))
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_release(folder: Path) -> dict:
    path = folder / "release.json"
    if not path.is_file():
        raise ShardError(f"{path}: no release here (ovrsis release create makes one)")
    try:
        release = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ShardError(f"{path}: not a release description ({error})") from None
    schema = release.get("schema_version") if isinstance(release, dict) else type(release).__name__
    if schema != RELEASE_SCHEMA_VERSION:
        raise ShardError(f"{path}: release schema {schema}, this reader knows {RELEASE_SCHEMA_VERSION}")
    return release


def diff_releases(a: Path, b: Path) -> ReleaseDiff:
    """What changed from release A to release B: tiles, their categories, mask pixels per category
    (counted pixel by pixel from both masks, for the tiles whose mask changed) and reviews. A release
    folder whose files are not what `create_release` writes is refused (ShardError), naming it."""
    for folder in (a, b):
        read_release(folder)
    try:
        return _diff(a, b)
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise ShardError(f"{a} or {b}: a release file is damaged or not ovrsis's ({error!r})") from None


def _diff(a: Path, b: Path) -> ReleaseDiff:
    if read_release(a)["taxonomy"]["version"] != read_release(b)["taxonomy"]["version"]:
        raise ShardError(f"{a} and {b} were made with different taxonomies: their masks' values mean different classes")
    names = read_release(b)["taxonomy"]["names"]
    before, after = _tiles(a), _tiles(b)
    result = ReleaseDiff(added=sorted(after.keys() - before.keys()), removed=sorted(before.keys() - after.keys()))
    changed = sorted(k for k in before.keys() & after.keys() if before[k]["mask_digest"] != after[k]["mask_digest"])
    result.masks_changed = changed
    for key in changed:
        old, new = set(before[key]["pixels"]), set(after[key]["pixels"])
        if old != new:
            result.categories_changed[key] = {"gained": sorted(new - old), "lost": sorted(old - new)}
    pixels: dict[str, Counter] = {}
    earlier = _MaskIndex(a)
    for key, new in _masks(b, set(changed)):  # one tile's two masks in memory at a time
        old = earlier.mask(key)
        moved = old != new if old.shape == new.shape else None  # another tiling: every pixel is another pixel
        for mask, direction in ((new, "gained"), (old, "lost")):
            values = mask[moved] if moved is not None else mask.reshape(-1)
            for value, count in zip(*np.unique(values, return_counts=True), strict=True):
                if value != IGNORE_INDEX:
                    pixels.setdefault(_name(names, value), Counter())[direction] += int(count)
    for keys, side, direction in ((result.added, after, "gained"), (result.removed, before, "lost")):
        for key in keys:  # a tile added or removed gains or loses all its labelled pixels
            for name, count in side[key]["pixels"].items():
                pixels.setdefault(name, Counter())[direction] += count
    result.pixels_changed = {name: {"gained": c["gained"], "lost": c["lost"]} for name, c in sorted(pixels.items())}
    known = {_review_order(r) for r in _lines(a / "reviews.jsonl")}
    result.reviews_added = [r for r in _lines(b / "reviews.jsonl") if _review_order(r) not in known]
    return result


def _freeze_shards(out: Path, manifest: dict, target: Path) -> list[dict]:
    """Each shard linked (or copied) into TARGET and checked against the manifest's sha256; a row per
    sample (key, split, the mask part's sha256 and pixels per category), sorted by key."""
    names = manifest["taxonomy"]["names"]
    rows = []
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            source = confined_path(shards_dir(out), shard["name"], "shard name")
            copy = target / shard["name"]
            try:
                os.link(source, copy)
            except OSError:  # another disk, or links not allowed: a copy
                shutil.copyfile(source, copy)
            if file_sha256(copy) != shard["sha256"]:
                raise ShardError(f"{source}: does not match its manifest's sha256 (rebuild or verify the shards)")
            skipped: list[str] = []
            for key, parts in read_samples(copy, skipped):
                mask = parts.get("mask.png")
                if mask is None:
                    raise ShardError(f"{source}: sample {key!r} has no mask")
                labels = np.asarray(Image.open(BytesIO(mask)))
                values, counts = np.unique(labels, return_counts=True)
                pixels = {_name(names, v): int(c) for v, c in zip(values, counts, strict=True) if v != IGNORE_INDEX}
                rows.append({"key": key, "split": split, "mask_digest": mask_digest(labels), "pixels": pixels})
            if skipped:
                raise ShardError(f"{source}: {skipped[0]}")
    return sorted(rows, key=lambda row: row["key"])


def _name(names: list[str], value: int) -> str:
    """A mask value's class; a value past the taxonomy (a damaged or foreign mask) is named, not fatal."""
    return names[value] if value < len(names) else f"value {value}"


def _masks(folder: Path, keys: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(key, mask) of KEYS out of a release's shards, one sample at a time."""
    for shard in sorted((folder / "shards").glob("*.tar")):
        for key, parts in read_samples(shard, []):
            if key in keys:
                yield key, _decode_mask(parts["mask.png"])


class _MaskIndex:
    """A release's masks by key, read on demand from their place in the shards (no tile held)."""

    def __init__(self, folder: Path) -> None:
        self._where: dict[str, tuple[Path, str]] = {}
        for shard in sorted((folder / "shards").glob("*.tar")):
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".mask.png"):
                        self._where.setdefault(member.name.split(".", 1)[0], (shard, member.name))

    def mask(self, key: str) -> np.ndarray:
        shard, name = self._where[key]
        with tarfile.open(shard) as tar:
            return _decode_mask(tar.extractfile(name).read())


def _decode_mask(data: bytes) -> np.ndarray:
    try:
        return np.asarray(Image.open(BytesIO(data)))
    except Image.DecompressionBombError as error:  # a hostile release: refused, not a crash
        raise ValueError(f"a mask too large to decode: {error}") from None


def _tiles(folder: Path) -> dict[str, dict]:
    return {row["key"]: row for row in _lines(folder / "tiles.jsonl")}


def _review_order(review: dict) -> tuple:
    return (review["project_id"], review["task_id"], review["annotation_id"], review["updated_at"])


def _lines(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def _write_lines(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")


def _card(release: dict, manifest: dict, inputs: ReleaseInputs, balance_markdown: str | None) -> str:
    """The dataset card: what a user reads before citing or downloading the release."""
    samples = release["samples"]
    categories = manifest.get("categories", {})
    domains = manifest.get("domains", {})
    config = release.get("build_config") or {}
    lines = [
        f"# Release {release['version']}",
        "",
        f"- digest: `{release['digest']}` (manifest sha256 `{release['manifest_sha256']}`, "
        f"ledger sha256 `{release['ledger_sha256'] or 'no ledger'}`)",
        f"- samples: {', '.join(f'{split} {n}' for split, n in samples.items())} ({sum(samples.values())} in all)",
        f"- taxonomy: {len(release['taxonomy']['names'])} classes, version `{release['taxonomy']['version']}`",
        f"- reviews applied: {release['reviews']} (audit round `{manifest.get('audit_round')}`)",
        f"- licence: {release['licence']} (the imagery's own licence applies to the images)",
        "",
        "## Classes",
        "",
        "| class | pixels | images |",
        "|---|---:|---:|",
        *(
            f"| {name} | {info.get('pixels', 0)} | {info.get('images', 0)} |"
            for name, info in categories.items()
            if info.get("images")
        ),
        "",
        "## Domains",
        "",
        "| domain | tiles |",
        "|---|---:|",
        *(f"| {name} | {count} |" for name, count in domains.items()),
        "",
        "## How it was made",
        "",
        f"Built by `ovrsis build` from {', '.join(str(p) for p in config.get('inputs', []))} with models "
        f"`{config.get('models')}` and taxonomy `{config.get('taxonomy')}`; tiles of "
        f"{(config.get('tiling') or {}).get('tile_size')} px; selection {config.get('selection')}. The build "
        "configuration is in release.json; the reviews' identities in reviews.jsonl.",
        "",
    ]
    if balance_markdown:
        lines += ["## Balance", "", balance_markdown.strip(), ""]
    if inputs.audit_markdown:
        lines += ["## Human audit (Table II)", "", inputs.audit_markdown.strip(), ""]
    return "\n".join(lines)
