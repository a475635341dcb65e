"""A bad-input corpus made by code: every kind of raster and caption file a user's folder may hold.

Nothing is downloaded or copied: each file is generated here, small, and deterministic. Both makers
return what each entry should come to, so one test can run the whole corpus through a command and
check every entry: "good" (must be processed and written) or "bad: WHY" (must be reported, with a
reason that contains WHY, case-insensitively; the run goes on).

Rasters are at most 96 px on a side (so a tile size of 64 gives one or two tiles each), except the
absurd header, a ~100 kB sparse GeoTIFF whose header claims 100000 x 100000 pixels.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

GOOD = "good"
TILE_SIZE = 64  # the tile size the corpus is laid out for
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF orientation: the stored pixels must be turned 90 degrees clockwise to view
GEO = {"crs": "EPSG:32633", "transform": Affine(0.5, 0, 400000, 0, -0.5, 5000000)}
ODD_CRS = "+proj=ortho +lat_0=52 +lon_0=5 +ellps=WGS84 +units=m +no_defs"  # valid, but no EPSG code


def make_raster_corpus(folder: Path) -> dict[str, str]:
    """Write every raster kind under `folder`; returns {path relative to folder: expected outcome}.

    A good file must have every tile processed. A bad file must be reported: the file, or at least one
    of its tiles (the readable top of a truncated GeoTIFF is still used), quarantined with a reason
    containing WHY. The unreadable file is expected good when this process can still read it (root
    ignores file modes), bad otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # two kinds are meant to lack georeferencing
        return _write_raster_corpus(folder)


def _write_raster_corpus(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    expected: dict[str, str] = {}

    def geotiff(name: str, data: np.ndarray, outcome: str = GOOD, **profile) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "driver": "GTiff",
            "count": data.shape[0],
            "height": data.shape[1],
            "width": data.shape[2],
            "dtype": data.dtype.name,
            **GEO,
            **profile,
        }
        with rasterio.open(path, "w", **settings) as out:
            out.write(data)
        expected[name] = outcome
        return path

    def rgb(height: int = 48, width: int = 80) -> np.ndarray:
        return rng.integers(1, 255, (3, height, width), dtype=np.uint8)

    # --- good: ordinary and unusual but valid imagery ---------------------------------------------
    geotiff("good_rgb.tif", rgb())
    geotiff("good_no_crs.tif", rgb(), crs=None, transform=Affine.identity())
    geotiff("good_odd_crs.tif", rgb(), crs=ODD_CRS)
    geotiff("good_uint16.tif", rng.integers(0, 4000, (3, 48, 64), dtype=np.uint16))
    geotiff("good_int16_negative.tif", rng.integers(-500, 3000, (1, 48, 64), dtype=np.int16))
    float_nan = rng.random((3, 48, 64), dtype=np.float32)
    float_nan[:, :10] = np.nan
    geotiff("good_float_nan.tif", float_nan)
    geotiff("good_two_band.tif", rng.integers(0, 255, (2, 48, 64), dtype=np.uint8))
    geotiff("good_four_band.tif", rng.integers(0, 255, (4, 48, 64), dtype=np.uint8))
    geotiff("good_sixteen_px.tif", rgb(16, 16))  # the smallest raster read (MIN_SIDE)
    geotiff("good_smaller_than_tile.tif", rgb(20, 30))
    half_nodata = rgb()
    half_nodata[:, :, :40] = 0
    geotiff("good_half_nodata.tif", half_nodata, nodata=0)
    geotiff(
        "good_tiled_deflate_bigtiff.tif",
        rgb(),
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
        BIGTIFF="YES",
    )
    geotiff("GOOD_UPPER_CASE.TIF", rgb())
    geotiff("good name with spaces.v2.tif", rgb())
    geotiff("nested/deeper/good_nested.tif", rgb())
    _png(folder, expected, "good_grey.png", rng.integers(0, 255, (48, 64), dtype=np.uint8))
    _png(folder, expected, "good_rgba.png", rng.integers(0, 255, (48, 64, 4), dtype=np.uint8))
    _palette_png(folder / "good_palette.png")
    expected["good_palette.png"] = GOOD
    Image.fromarray(rgb().transpose(1, 2, 0)).save(folder / "good_plain.jpg", quality=90)
    expected["good_plain.jpg"] = GOOD
    write_exif_rotated_jpeg(folder / "good_exif_rotated.jpg")
    expected["good_exif_rotated.jpg"] = GOOD
    with rasterio.open(
        folder / "good_tiff_named.png", "w", driver="GTiff", count=3, height=32, width=32, dtype="uint8"
    ) as out:
        out.write(rgb(32, 32))
    expected["good_tiff_named.png"] = GOOD

    # --- bad: each must be quarantined with its reason, the others unaffected ---------------------
    (folder / "bad_zero_byte.tif").write_bytes(b"")
    expected["bad_zero_byte.tif"] = "bad: zero-byte file"
    (folder / "bad_text_as_raster.tif").write_text("this is not a raster\n" * 20)
    expected["bad_text_as_raster.tif"] = "bad: cannot be read as a raster"
    (folder / "bad_html_as.png").write_text("<html><body>403 Forbidden</body></html>\n")
    expected["bad_html_as.png"] = "bad: cannot be read as a raster"
    full_png = _png(folder, {}, "bad_truncated.png", rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    full_png.write_bytes(full_png.read_bytes()[: full_png.stat().st_size // 2])
    expected["bad_truncated.png"] = "bad: truncated"
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / "bad_truncated.jpg", quality=95)
    _cut_in_half(folder / "bad_truncated.jpg")
    expected["bad_truncated.jpg"] = "bad: truncated"
    truncated = geotiff("bad_truncated.tif", rng.integers(0, 255, (3, 96, 96), dtype=np.uint8), "bad: TIFFReadEncoded")
    _cut_in_half(truncated)
    geotiff("bad_all_nodata.tif", np.zeros((3, 48, 64), np.uint8), "bad: all pixels are nodata", nodata=0)
    geotiff("bad_one_by_one.tif", rgb(1, 1), "bad: too small")
    geotiff("bad_sliver.tif", rgb(3, 90), "bad: too small")
    geotiff("bad_complex.tif", np.ones((1, 16, 16), np.complex64), "bad: complex data type")
    write_absurd_header(folder / "bad_absurd_header.tif")
    expected["bad_absurd_header.tif"] = "bad: --max-pixels"
    (folder / "bad_broken_link.tif").symlink_to(folder / "no-such-target.tif")
    expected["bad_broken_link.tif"] = "bad: broken symbolic link"
    (folder / "bad_directory.tif").mkdir()
    expected["bad_directory.tif"] = "bad: not a regular file"
    (folder / "bad_unsupported.bmp").write_bytes(b"BM" + bytes(60))
    expected["bad_unsupported.bmp"] = "bad: unsupported format .bmp"
    unreadable = geotiff("bad_unreadable.tif", rgb())
    unreadable.chmod(0)
    expected["bad_unreadable.tif"] = GOOD if os.access(unreadable, os.R_OK) else "bad: permission denied"
    return expected


def write_exif_rotated_jpeg(path: Path, height: int = 40, width: int = 80) -> np.ndarray:
    """A landscape JPEG stored with EXIF orientation 6: the viewer (and our reader) shows it portrait.
    The left half is white, so after the turn the *top* half is white. Returns the upright pixels."""
    stored = np.zeros((height, width, 3), np.uint8)
    stored[:, : width // 2] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    return np.rot90(stored, k=-1)


def write_absurd_header(path: Path, side: int = 100_000) -> Path:
    """A sparse GeoTIFF (~100 kB) whose header claims side x side pixels: one block written, the
    rest absent, as a corrupt or malicious header would claim."""
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        **GEO,
        "tiled": True,
        "blockxsize": 1024,
        "blockysize": 1024,
        "compress": "deflate",
        "SPARSE_OK": True,
        "BIGTIFF": "YES",
    }
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.full((3, 16, 16), 9, np.uint8), window=rasterio.windows.Window(0, 0, 16, 16))
    return path


def _png(folder: Path, expected: dict[str, str], name: str, pixels: np.ndarray) -> Path:
    path = folder / name
    Image.fromarray(pixels).save(path)
    expected[name] = GOOD
    return path


def _palette_png(path: Path) -> None:
    """Indices 0, 1, 2 in stripes, coloured pure red, green, blue by the palette."""
    image = Image.new("P", (48, 32))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    image.putdata([(column // 16) for _ in range(32) for column in range(48)])
    image.save(path)


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


LONG_CAPTION = "a road " * 150_000  # 1,050,000 characters: over spaCy's 1,000,000 limit


def make_caption_corpus(folder: Path) -> dict[str, str]:
    """Write caption files under `folder`; returns {"FILE:LINE" or "FILE": expected outcome}.

    `mixed.jsonl` holds one kind per line (keys "mixed.jsonl:N"); the other files are file-level
    kinds (keys "FILE"). Good lines' ids are "ok..." so a test can find them in the output."""
    folder.mkdir(parents=True, exist_ok=True)
    good = "many buildings and a road with cars near a river"
    lines: list[tuple[bytes, str]] = [
        (_line({"id": "ok_single", "caption": good}), GOOD),
        (_line({"id": "ok_list", "captions": [good, "two tennis courts next to a parking lot"]}), GOOD),
        (_line({"id": 7, "caption": good}), GOOD),  # integer ids are read as strings
        (_line({"id": "ok_unicode", "caption": "a café beside a road with trees — and a pond"}), GOOD),
        (_line({"id": "ok_one_bad_caption", "captions": [good, 42]}), GOOD),  # the bad caption is dropped, reported
        (b'{"id": "broken", "caption": "a road"\n', "bad: invalid JSON"),
        (_line(["a", "list"]), "bad: expected a JSON object"),
        (_line({"caption": good}), "bad: missing or empty 'id'"),
        (_line({"id": "number", "caption": 42}), "bad: must be a string"),
        (_line({"id": "null", "caption": None}), "bad: must be a string"),
        (_line({"id": "empty", "caption": "   "}), "bad: caption is empty"),
        (_line({"id": "no_captions", "captions": []}), "bad: non-empty list"),
        (_line({"id": "no_caption_key", "text": good}), "bad: needs 'caption'"),
        (_line({"id": "chinese", "caption": "一条河流穿过城市"}), "bad: no Latin letters"),
        (_line({"id": "huge", "caption": LONG_CAPTION}), "bad: characters long"),
        (_line({"id": "ok_single", "caption": good}), "bad: duplicate id"),
        ("not utf-8: caf\xe9\n".encode("latin-1"), "bad: not UTF-8"),
    ]
    mixed = folder / "mixed.jsonl"
    mixed.write_bytes(b"".join(raw for raw, _ in lines) + b"\n")  # a trailing blank line is skipped
    expected = {f"mixed.jsonl:{number}": outcome for number, (_, outcome) in enumerate(lines, start=1)}

    text = _line({"id": "ok_file", "caption": good}).decode()
    (folder / "utf8_bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    expected["utf8_bom.jsonl"] = GOOD
    (folder / "crlf.jsonl").write_bytes(text.replace("\n", "\r\n").encode())
    expected["crlf.jsonl"] = GOOD
    (folder / "no_final_newline.jsonl").write_text(text.rstrip("\n"))
    expected["no_final_newline.jsonl"] = GOOD
    (folder / "utf16.jsonl").write_text(text, encoding="utf-16")
    expected["utf16.jsonl"] = "bad: UTF-16"
    (folder / "empty.jsonl").write_bytes(b"")
    expected["empty.jsonl"] = "bad: no caption lines"
    return expected


def _line(value: object) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")
