"""What benchmarks share: where they find the real sample data (`../shared/data/real`, beside the
checkout), and their `--smoke` mode."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("OVRSIS_SHARED_DATA", REPO.parent / "shared" / "data" / "real"))
RSICD_CAPTIONS = SHARED_REAL / "captions" / "rsicd_captions.jsonl"

_smoke = False  # set by parse_args: absent real samples skip a smoke run rather than fail it


def require(path: Path) -> Path:
    """`path` if it exists; else the benchmark stops: an error, or in a smoke run a `skipped:` line and
    exit 0, since a fresh clone has no ../shared and the tests must still pass there."""
    if not path.exists():
        if _smoke:
            print(f"skipped: {path} is absent (the real samples in ../shared/data/real)")
            sys.exit(0)
        sys.exit(f"{path} is absent: this benchmark needs the real samples in ../shared/data/real")
    return path


def parse_args(parser: argparse.ArgumentParser, **smallest: object) -> argparse.Namespace:
    """The parser's arguments plus `--smoke`: the same run with the options in `smallest` set to those
    values, in seconds, so that tests/test_benchmarks.py runs every benchmark end to end and a script
    that no longer works fails there rather than when its figures are next needed."""
    global _smoke
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code, in seconds (tests)")
    args = parser.parse_args()
    unknown = set(smallest) - set(vars(args))
    if unknown:  # an option renamed without its smoke value: fail in every mode, not only in the tests
        raise ValueError(f"smoke values for options this benchmark lacks: {', '.join(sorted(unknown))}")
    if args.smoke:
        vars(args).update(smallest)
        _smoke = True
    return args
