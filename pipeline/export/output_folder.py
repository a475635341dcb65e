"""Reading an output folder for the exporters: its records, its class names, its georeferencing.

Every exporter needs the same three things and the same errors for a folder that is not an output
folder, so they live here once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ovrsis.errors import ExportError
from pipeline.dataset.records import TileRecord
from pipeline.files.layout import manifest_file, records_file
from pipeline.files.safe_names import UnsafeName, confined_name


@dataclass(frozen=True)
class OutputFolder:
    path: Path
    records: list[TileRecord]
    class_names: list[str]

    def usable(self) -> list[TileRecord]:
        """Records with a mask (quarantined tiles have none)."""
        return [r for r in self.records if r.semantic_mask and not r.quarantine]


def read_output_folder(path: Path, taxonomy: str | None = None) -> OutputFolder:
    """The records and class names of an `ovrsis annotate` or `ovrsis build` output folder.

    Class names, in order of authority: `--taxonomy` when given; else the build's manifest.json
    (what the shards were written with); else the taxonomy the records name in their provenance,
    refused when its version differs from the one the records were made with (mask values would
    name the wrong classes)."""
    records_path = records_file(path)
    if not records_path.is_file():
        raise ExportError(f"{records_path}: no records (is {path} an annotate or build output folder?)")
    records = []
    for number, line in enumerate(records_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TileRecord.model_validate_json(line))
        except ValidationError as error:
            raise ExportError(f"{records_path}:{number}: not a tile record ({error.errors()[0]['msg']})") from None
    return OutputFolder(path, records, _class_names(path, records, taxonomy))


def _class_names(path: Path, records: list[TileRecord], taxonomy: str | None) -> list[str]:
    from taxonomy.loader import TaxonomyError, load_taxonomy

    if taxonomy:
        try:
            return load_taxonomy(taxonomy).names
        except TaxonomyError as error:
            raise ExportError(str(error)) from error
    manifest = manifest_file(path)
    if manifest.is_file():
        try:
            return list(json.loads(manifest.read_text())["taxonomy"]["names"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ExportError(f"{manifest}: no taxonomy names ({error})") from None
    named = {(r.provenance.get("taxonomy") or {}).get("name") for r in records} - {None}
    versions = {(r.provenance.get("taxonomy") or {}).get("version") for r in records} - {None}
    if len(named) != 1:
        raise ExportError(
            f"{path / 'records.jsonl'}: the records name {sorted(named) or 'no'} taxonomy; pass --taxonomy"
        )
    try:
        loaded = load_taxonomy(named.pop())
    except TaxonomyError as error:
        raise ExportError(f"{path / 'records.jsonl'}: {error}; pass --taxonomy") from error
    if versions and versions != {loaded.version}:
        raise ExportError(
            f"{path / 'records.jsonl'}: made with taxonomy {loaded.name} version {sorted(versions)}, "
            f"the installed one is {loaded.version}; pass --taxonomy with the one used"
        )
    return loaded.names


def key_problem(record: TileRecord) -> str | None:
    """Why the tile's key cannot name a file or folder (None when it can). An exporter that writes
    one per tile skips such a tile: records.jsonl may come from elsewhere, and a key such as `../x`
    joined to the destination would land outside it."""
    try:
        confined_name(record.key, "tile key")
    except UnsafeName as error:
        return str(error)
    return None


def georeferenced(record: TileRecord) -> bool:
    """A tile whose pixels have coordinates: an affine transform and a CRS. A transform without a CRS
    is coordinates in an unknown system, which a GIS would silently misplace, so it does not count."""
    return bool(record.source.transform) and bool(record.source.crs)
