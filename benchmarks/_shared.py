"""Where benchmarks find the real sample data (`../shared/data/real`, beside the checkout)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("OVRSIS_SHARED_DATA", REPO.parent / "shared" / "data" / "real"))
RSICD_CAPTIONS = SHARED_REAL / "captions" / "rsicd_captions.jsonl"


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} is absent: this benchmark needs the real samples in ../shared/data/real")
    return path
