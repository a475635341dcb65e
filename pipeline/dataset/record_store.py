"""Tile records on disk, read by key: how a build handles 100,000 records without holding them.

A build appends each batch's records to a temporary JSON Lines file as the batch finishes, then
`sort_records` rewrites them into `records.jsonl` ordered by key (the contract of that file) and
returns a `RecordIndex`: the byte offset of every key, not the records, so that sharding reads each
selected record when it writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.dataset.records import TileRecord
from pipeline.files.atomic import atomic_path


class RecordIndex(Mapping[str, TileRecord]):
    """The records of a JSON Lines file by key, parsed on access; `keys` restricts it to a subset."""

    def __init__(self, path: Path, offsets: dict[str, int]) -> None:
        self.path = Path(path)
        self.offsets = offsets

    def subset(self, keys: list[str]) -> RecordIndex:
        return RecordIndex(self.path, {key: self.offsets[key] for key in keys})

    def __getitem__(self, key: str) -> TileRecord:
        with open(self.path, "rb") as handle:
            handle.seek(self.offsets[key])
            return TileRecord.model_validate_json(handle.readline())

    def __iter__(self) -> Iterator[str]:
        return iter(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def values(self) -> Iterator[TileRecord]:  # type: ignore[override]
        """All records in file order, through one open file."""
        wanted = set(self.offsets.values())
        with open(self.path, "rb") as handle:
            offset = 0
            for line in handle:
                if offset in wanted:
                    yield TileRecord.model_validate_json(line)
                offset += len(line)


def sort_records(unsorted: Path, destination: Path) -> RecordIndex:
    """Rewrite the JSON Lines `unsorted` into `destination` ordered by key (atomically) and index it.

    Duplicate keys are refused: a key names one tile."""
    offsets: dict[str, int] = {}
    with open(unsorted, "rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            key = json.loads(line)["key"]
            if key in offsets:
                raise ValueError(f"{unsorted}:{number}: tile key {key!r} appears twice")
            offsets[key] = offset
            offset += len(line)
    written: dict[str, int] = {}
    with atomic_path(destination) as temporary, open(unsorted, "rb") as source, open(temporary, "wb") as out:
        for key in sorted(offsets):
            source.seek(offsets[key])
            written[key] = out.tell()
            out.write(source.readline())
    return RecordIndex(destination, written)
