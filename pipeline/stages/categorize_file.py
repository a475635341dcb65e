"""Run the caption -> categories stage over a JSON Lines file, in batches, with a progress bar.

Input lines are `{"id": str, "caption": str}` or `{"id": str, "captions": [str, ...]}`. Bad lines and
bad captions are reported with their line number and written to an errors file; the rest go on.
A caption longer than MAX_CAPTION_CHARS is a bad caption (spaCy refuses texts over 1,000,000
characters, and long before that one caption would hold a batch's memory), and a batch the parser or
matcher fails on is retried line by line, so only the line at fault is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.build.batching import batched
from pipeline.files.jsonl import LineError, atomic_writer, read_jsonl, write_json_line
from pipeline.stages.categories import CaptionCategorizer
from pipeline.stages.phrases import CaptionError, check_caption

MAX_CAPTION_CHARS = 10_000  # ~1,500 words: ten times the longest generated captions


@dataclass
class CaptionItem:
    line: int
    id: str
    captions: list[str]


@dataclass
class CategorizeSummary:
    images: int = 0
    captions: int = 0
    errors: list[LineError] = field(default_factory=list)
    warnings: list[LineError] = field(default_factory=list)
    methods: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    unmatched: Counter = field(default_factory=Counter)
    images_without_category: int = 0


def parse_item(line: int, value: Any, warnings: list[LineError]) -> CaptionItem:
    """Validate one input object; raises ValueError naming the problem. Bad captions in a list are
    dropped with a warning as long as one usable caption remains."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    identifier = value.get("id")
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        identifier = str(identifier)
    if not isinstance(identifier, str) or not identifier.strip():
        raise ValueError("missing or empty 'id'")
    if "captions" in value:
        captions = value["captions"]
        if not isinstance(captions, list) or not captions:
            raise ValueError(f"id {identifier!r}: 'captions' must be a non-empty list of strings")
    elif "caption" in value:
        captions = [value["caption"]]
    else:
        raise ValueError(f"id {identifier!r}: needs 'caption' or 'captions'")
    usable, dropped = [], []
    for position, caption in enumerate(captions):
        try:
            usable.append(_check_length(check_caption(caption)))
        except CaptionError as error:
            dropped.append(LineError(line, f"id {identifier!r} caption #{position}: {error}", ""))
    if not usable:
        raise ValueError(f"id {identifier!r}: no usable caption ({dropped[-1].message.split(': ', 1)[-1]})")
    warnings.extend(dropped)
    return CaptionItem(line, identifier, usable)


def _check_length(caption: str) -> str:
    if len(caption) > MAX_CAPTION_CHARS:
        raise CaptionError(f"caption is {len(caption):,} characters long; at most {MAX_CAPTION_CHARS:,}")
    return caption


def iter_items(path: Path, summary: CategorizeSummary) -> Iterator[CaptionItem]:
    seen: dict[str, int] = {}
    for entry in read_jsonl(path):
        if isinstance(entry, LineError):
            summary.errors.append(entry)
            continue
        line, value = entry
        try:
            item = parse_item(line, value, summary.warnings)
        except ValueError as error:
            summary.errors.append(LineError(line, str(error), _short(value)))
            continue
        if item.id in seen:
            summary.errors.append(
                LineError(line, f"duplicate id {item.id!r} (first on line {seen[item.id]})", _short(value))
            )
            continue
        seen[item.id] = line
        yield item


def categorize_file(
    categorizer: CaptionCategorizer,
    captions_path: Path,
    out_path: Path,
    errors_path: Path | None = None,
    batch_size: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> CategorizeSummary:
    """Write one output line per valid input line, in input order; errors go to `errors_path`."""
    if not captions_path.is_file():
        raise FileNotFoundError(f"{captions_path}: captions file not found")
    summary = CategorizeSummary()
    with atomic_writer(out_path) as out:
        for batch in batched(iter_items(captions_path, summary), batch_size):
            for item, result in _categorize(categorizer, batch, summary):
                write_json_line(
                    out,
                    {
                        "id": item.id,
                        "categories": [c.model_dump() for c in result.categories],
                        "unmatched": result.unmatched,
                        "negated": result.negated,
                    },
                )
                _count(summary, item, result)
            if on_batch:
                on_batch(batch[-1].line - batch[0].line + 1)
    if errors_path is not None and (summary.errors or summary.warnings):
        with atomic_writer(errors_path) as handle:
            for problem in sorted([*summary.errors, *summary.warnings], key=lambda p: p.line):
                write_json_line(handle, {"line": problem.line, "error": problem.message, "raw": problem.raw})
    return summary


def _categorize(categorizer: CaptionCategorizer, batch: list[CaptionItem], summary: CategorizeSummary):
    """(item, result) for the batch, in order; if the batch fails, line by line, each failing line
    reported as an error instead of costing the batch."""
    try:
        return list(zip(batch, categorizer.categorize([item.captions for item in batch])))
    except Exception:  # noqa: BLE001 - isolated below, line by line
        return [pair for item in batch for pair in _categorize_one(categorizer, item, summary)]


def _categorize_one(categorizer: CaptionCategorizer, item: CaptionItem, summary: CategorizeSummary):
    try:
        return [(item, categorizer.categorize([item.captions])[0])]
    except Exception as error:  # noqa: BLE001 - any parser or matcher failure costs this line only
        summary.errors.append(
            LineError(
                item.line, f"id {item.id!r}: {type(error).__name__}: {_first_line(error)}", repr(item.captions)[:200]
            )
        )
        return []


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _count(summary: CategorizeSummary, item: CaptionItem, result) -> None:
    summary.images += 1
    summary.captions += len(item.captions)
    summary.methods.update(c.method for c in result.categories)
    summary.categories.update(c.name for c in result.categories)
    summary.unmatched.update(result.unmatched)
    summary.images_without_category += not result.categories


def _short(value: Any) -> str:
    return repr(value)[:200]
