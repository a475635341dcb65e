"""Figures a person reads: titled image panels with a legend of the classes shown (colour swatch + name).

Used for `piseg eval`'s qualitative panels (image | ground truth | prediction) and `piseg predict`'s
overlay. Why a legend is drawn into the image: class colours are arbitrary (`pipeline.raster.outputs.palette`),
so a coloured mask without its key says nothing, and these PNGs are opened alone, outside the report.
Drawn with PIL (its bundled FreeType font): the pixels of each panel stay as computed, only enlarged by a
whole factor when the image is too small to see, never resampled in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from taxonomy.masks import IGNORE_INDEX as IGNORE

MIN_PANEL_SIDE = 256  # smaller images are enlarged (nearest neighbour, by a whole factor) to at least this
LABEL_CHARACTERS = 60  # a longer class name is cut, so one name cannot widen the figure without bound
TEXT = (20, 20, 20)
OUTLINE = (110, 110, 110)  # around swatches, so a white or black class colour still shows as a square
BACKGROUND = 255
IGNORE_COLOUR = (0, 0, 0)  # not-labelled pixels (255) in the masks


@dataclass(frozen=True)
class LegendEntry:
    colour: tuple[int, int, int]
    label: str


def class_legend(
    names: Sequence[str], colours: np.ndarray, ids: Sequence[int], notes: dict[int, str] | None = None
) -> list[LegendEntry]:
    """Entries for the class ids shown, in id order; NOTES adds text after a class's name (e.g. its share).
    The ignore value (255) becomes "not labelled" in black, as the masks draw it."""
    notes = notes or {}
    entries = []
    for index in sorted(set(ids)):
        if index == IGNORE:
            entries.append(LegendEntry(IGNORE_COLOUR, f"not labelled ({IGNORE}, not scored)"))
            continue
        name = names[index] if len(names[index]) <= LABEL_CHARACTERS else names[index][: LABEL_CHARACTERS - 1] + "…"
        note = f" {notes[index]}" if index in notes else ""
        entries.append(LegendEntry(tuple(int(c) for c in colours[index]), f"{name}{note}"))
    return entries


def compose(
    panels: Sequence[tuple[str, np.ndarray]],
    legend: Sequence[LegendEntry],
    heading: str | None = None,
    legend_title: str = "Classes",
) -> np.ndarray:
    """One (H, W, 3) uint8 figure: an optional HEADING line, the PANELS side by side each under its title,
    then LEGEND_TITLE and the legend entries, wrapped to the figure's width. Panels share one height."""
    height, width = panels[0][1].shape[:2]
    scale = max(1, math.ceil(MIN_PANEL_SIDE / min(height, width)))
    shown = [(title, np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)) for title, pixels in panels]
    panel_h = height * scale
    size = int(np.clip(round(min(panel_h, width * scale) / 18), 14, 32))  # text grows with the panels, within reason
    font = ImageFont.load_default(size=size)
    margin, gap, swatch = size // 2, max(4, size // 2), size
    line = size + size // 2
    entries = [(entry, _text_width(font, entry.label)) for entry in legend]
    widest_entry = max((swatch + gap // 2 + w for _, w in entries), default=0)
    row_width = sum(pixels.shape[1] for _, pixels in shown) + gap * (len(shown) - 1)
    titles_width = max(_text_width(font, text) for text in [legend_title, heading or "", *(t for t, _ in panels)])
    inner = max(row_width, widest_entry, titles_width, 16 * size)
    rows = _flow(entries, inner, swatch + gap // 2, gap * 2)
    total_h = margin + (line if heading else 0) + line + panel_h + margin + line + len(rows) * line + margin
    canvas = Image.new("RGB", (inner + 2 * margin, total_h), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    y = margin
    if heading:
        draw.text((margin, y), heading, fill=TEXT, font=font)
        y += line
    x = margin
    for title, pixels in shown:
        draw.text((x + (pixels.shape[1] - _text_width(font, title)) // 2, y), title, fill=TEXT, font=font)
        canvas.paste(Image.fromarray(pixels), (x, y + line))
        x += pixels.shape[1] + gap
    y += line + panel_h + margin
    draw.text((margin, y), legend_title, fill=TEXT, font=font)
    y += line
    for row in rows:
        x = margin
        for entry, text_width in row:
            draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=entry.colour, outline=OUTLINE)
            draw.text((x + swatch + gap // 2, y), entry.label, fill=TEXT, font=font)
            x += swatch + gap // 2 + text_width + gap * 2
        y += line
    return np.asarray(canvas)


def _text_width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil(right - left))


def _flow(
    entries: list[tuple[LegendEntry, int]], width: int, lead: int, spacing: int
) -> list[list[tuple[LegendEntry, int]]]:
    """Legend entries in rows no wider than WIDTH: each entry is LEAD (its swatch) + its text, SPACING apart."""
    rows: list[list[tuple[LegendEntry, int]]] = []
    used = 0
    for entry, text_width in entries:
        needed = lead + text_width
        if rows and used + spacing + needed <= width:
            rows[-1].append((entry, text_width))
            used += spacing + needed
        else:
            rows.append([(entry, text_width)])
            used = needed
    return rows
