"""The shards in a layout Hugging Face `datasets` loads whole: `ovrsis export hf`.

`datasets.load_dataset("webdataset", data_files=...)` reads a build's shards as they are only while
every record has the same shape: it infers the columns from the first five samples, and a later
record with an audit decision, a review or a dropped instance (fields that were empty or null in
those five) fails the whole load with a cast error. So this export rewrites each sample's `json`
part into one fixed schema, declared in a dataset card (README.md) beside the shards, which
`load_dataset(DEST)` reads: no inference, nothing to fail later.

    DEST/README.md                 the card: configs (splits -> data/*.tar), dataset_info features, class table
    DEST/data/{split}-000000.tar   per sample {key}.{jpg|png|webp} and {key}.mask.png (the build's bytes),
                                   {key}.json (the fixed schema below)

`json`: key, `classes` (the class ids present in the mask, a ClassLabel list: the class names travel
in the features, `ds.features["json"]["classes"].feature.names`), `categories` (the tile's proposed
category names), domain, crs (WKT or ""), transform ([] when none), window [row_off, col_off, height,
width], source (file name), reviewed, and `record`: the whole tile record as JSON text.

`record` is made fit to publish unless `--keep-private-fields` (pipeline.dataset.shards.public_record): source
paths relative to the build's inputs (the manifest's build configuration names them) or the file
name, reviewers as the output folder's keyed pseudonyms; shards built that way already are. A sample
whose member names are unsafe or whose key repeats (pipeline.dataset.shards.read_samples) is left out and
reported: the exported tars are extracted by others, and `../x` there lands outside their folder.

Image and mask bytes are the build's own. A build whose tiles mix image formats (whole JPEG/PNG
sources beside WebP tiles) would give one column per format; there every image is re-encoded as
PNG (lossless: the decoded pixels exactly), so the dataset has one image column.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.dataset.release import read_release
from pipeline.dataset.shards import (
    IMAGE_EXTENSIONS,
    Pseudonyms,
    ShardError,
    ShardReader,
    decode_image,
    image_part,
    public_record,
    read_samples,
)
from pipeline.export.output_folder import ExportError
from pipeline.files.atomic import atomic_path
from pipeline.files.layout import releases_dir
from pipeline.files.safe_names import UnsafeName, confined_path
from taxonomy.masks import IGNORE_INDEX as IGNORE


def hf_features(class_names: list[str], image_extension: str):
    """The `datasets.Features` of the exported samples (also usable as
    `load_dataset("webdataset", data_files=..., features=...)` on the exported tars)."""
    from datasets import ClassLabel, Features, List, Value
    from datasets import Image as HFImage

    return Features(
        {
            image_extension: HFImage(),
            "mask.png": HFImage(),
            "json": {
                "key": Value("string"),
                "classes": List(ClassLabel(names=list(class_names))),
                "categories": List(Value("string")),
                "domain": Value("string"),
                "crs": Value("string"),
                "transform": List(Value("float64")),
                "window": List(Value("int64")),
                "source": Value("string"),
                "reviewed": Value("bool"),
                "record": Value("string"),
            },
            "__key__": Value("string"),
            "__url__": Value("string"),
        }
    )


def export_hf(
    out_dir: Path,
    dest: Path,
    keep_private_fields: bool = False,
    skipped: list[str] | None = None,
    release: str | None = None,
) -> dict[str, int]:
    """Write DEST/data/*.tar and DEST/README.md from a build's shards, or from its release RELEASE
    (OUT/releases/RELEASE, `ovrsis release create`: the card then names the version and its digest);
    returns samples per split. Samples left out (unsafe member names, repeated keys) are named in `skipped`."""
    try:
        source = confined_path(releases_dir(out_dir), release, "release version") if release else out_dir
        version = read_release(source) if release else None
        reader = ShardReader(source)
    except (ShardError, UnsafeName) as error:
        raise ExportError(str(error)) from error
    names = reader.class_names
    mixed = reader.manifest.get("image_format") not in IMAGE_EXTENSIONS
    extension = "png" if mixed else reader.manifest["image_format"]
    publish = None if keep_private_fields else _publisher(out_dir, reader.manifest)
    skipped = [] if skipped is None else skipped
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for stale in (dest / "data").glob("*.tar"):
        stale.unlink()
    counts: dict[str, int] = {}
    for split in reader.manifest["splits"]:
        counts[split] = 0
        for shard in reader.shard_paths(split):
            try:
                target = confined_path(dest / "data", Path(shard).name, "shard name")
            except UnsafeName as error:
                raise ExportError(str(error)) from None
            with atomic_path(target) as temporary, tarfile.open(temporary, "w") as tar:
                for key, parts in read_samples(Path(shard), skipped):
                    for name, data in _hf_parts(key, parts, extension, mixed, names, shard, publish).items():
                        _add(tar, f"{key}.{name}", data)
                    counts[split] += 1
    _write_card(dest, out_dir, names, extension, counts, mixed, version)
    return counts


def _publisher(out_dir: Path, manifest: dict) -> Callable[[dict], dict]:
    """`public_record` with the build's inputs (from the manifest's build configuration, where it
    names them) and the output folder's pseudonyms."""
    build_config = manifest.get("build_config")
    inputs = build_config.get("inputs") if isinstance(build_config, dict) else None
    roots = [Path(path) for path in inputs or [] if isinstance(path, str)]
    pseudonyms = Pseudonyms(out_dir)
    return lambda record: public_record(record, roots, pseudonyms)


def _hf_parts(
    key: str,
    parts: dict,
    extension: str,
    mixed: bool,
    names: list[str],
    shard: str,
    publish: Callable[[dict], dict] | None,
) -> dict[str, bytes]:
    try:
        own = image_part({"__key__": key, **parts})
        record = json.loads(parts["json"])
        mask_bytes = parts["mask.png"]
        if not isinstance(record, dict):
            raise ShardError("the json part is not an object")
    except (ShardError, KeyError, json.JSONDecodeError) as error:
        raise ExportError(f"{shard}: sample {key}: {error}") from None
    if publish is not None:
        record = publish(record)
    if mixed:
        buffer = io.BytesIO()
        Image.fromarray(decode_image(parts[own])).save(buffer, format="PNG", compress_level=6)
        image = buffer.getvalue()
    else:
        image = parts[own]
    mask = np.asarray(Image.open(io.BytesIO(mask_bytes)))
    source = record.get("source") or {}
    window = source.get("window") or {}
    summary = {
        "key": key,
        "classes": [int(v) for v in np.unique(mask) if v != IGNORE and v < len(names)],
        "categories": [c["name"] for c in record.get("categories", [])],
        "domain": (record.get("domain") or {}).get("name", "unknown"),
        "crs": source.get("crs") or "",
        "transform": [float(v) for v in source.get("transform") or []],
        "window": [int(window.get(k, 0)) for k in ("row_off", "col_off", "height", "width")],
        "source": Path(source.get("path", "")).name,
        "reviewed": record.get("review") is not None,
        "record": json.dumps(record, sort_keys=True, separators=(",", ":")),
    }
    return {extension: image, "mask.png": mask_bytes, "json": json.dumps(summary, sort_keys=True).encode()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A tar entry with fixed metadata, as the build's shards have: identical inputs, identical bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "ovrsis", "ovrsis"
    tar.addfile(info, io.BytesIO(data))


def _write_card(
    dest: Path,
    out_dir: Path,
    names: list[str],
    extension: str,
    counts: dict[str, int],
    mixed: bool,
    release: dict | None = None,
) -> None:
    import yaml

    features = hf_features(names, extension)
    metadata = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*.tar"} for split in counts if counts[split]],
            }
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [
                {
                    "name": split,
                    "num_bytes": sum(p.stat().st_size for p in (dest / "data").glob(f"{split}-*.tar")),
                    "num_examples": n,
                }
                for split, n in counts.items()
                if n
            ],
        },
        "task_categories": ["image-segmentation"],
        "tags": ["remote-sensing", "open-vocabulary-segmentation", "webdataset", "ovrsis"],
    }
    table = "\n".join(f"| {i} | {name} |" for i, name in enumerate(names))
    bytes_note = (
        "Images were re-encoded as PNG (lossless) because the build mixed image formats."
        if mixed
        else "Image and mask bytes are the build's own."
    )
    title = out_dir.resolve().name + (f" {release['version']}" if release else "")
    if release:
        metadata["pretty_name"] = title
        metadata["license"] = release["licence"]
    provenance = (
        f"\nRelease {release['version']} (`ovrsis release create`), digest `{release['digest']}`.\n" if release else ""
    )
    body = f"""# {title}
{provenance}
Open-vocabulary remote-sensing segmentation tiles exported by `ovrsis export hf` from a build's
WebDataset shards ({", ".join(f"{split}: {n}" for split, n in counts.items())} samples).

    from datasets import load_dataset
    ds = load_dataset("path/to/this/folder")
    sample = ds["train"][0]
    image, mask = sample["{extension}"], sample["mask.png"]      # PIL images
    names = ds["train"].features["json"]["classes"].feature.names

`mask.png`: uint8, value i = class i below, 255 = nodata / ignore. `json.classes`: the classes present
in the mask; `json.record`: the whole tile record (docs/architecture.md of ovrsis).
{bytes_note}

| value | class |
|---|---|
{table}
| 255 | nodata / ignore |
"""
    with atomic_path(dest / "README.md") as temporary:
        temporary.write_text("---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + body)
