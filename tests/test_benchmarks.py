"""Every benchmark's `--smoke` mode: the script's own code end to end on the smallest inputs, in a
subprocess as a user runs it, so that a benchmark broken by a change elsewhere fails here rather than
when its figures are next needed (issue 26). `make test-benchmarks` runs them (marker bench_smoke)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = (
    "bench_annotate",
    "bench_audit",
    "bench_categories",
    "bench_flow_overhead",
    "bench_gdal_listing",
    "bench_gpu_box",
    "bench_import",
    "bench_ledger",
    "bench_order",
    "bench_overlap",
    "bench_piseg",
    "bench_sam_click",
    "bench_scale",
    "bench_selection",
    "bench_shards",
    "bench_tiling",
    "calibrate_embedding",
    "eval_categories",
    "eval_domains",
    "eval_lovo",
    "gpu_check",
    "gpu_check_build",
    "sim_audit",
)
# modes that run code of their own, not the default's
OTHER_MODES = (("bench_shards", "--images"), ("bench_gpu_box", "--webp"))
RUNS = [pytest.param(script, (), id=script) for script in SCRIPTS] + [
    pytest.param(script, (mode,), id=f"{script} {mode}") for script, mode in OTHER_MODES
]


@pytest.mark.bench_smoke
@pytest.mark.parametrize(("script", "mode"), RUNS)
def test_smoke_run_prints_figures(script: str, mode: tuple[str, ...]) -> None:
    command = [sys.executable, f"benchmarks/{script}.py", "--smoke", *mode]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(command[1:])} exited {result.returncode}:\n{result.stderr[-6000:]}"
    lines = result.stdout.strip().splitlines()
    if lines and lines[-1].startswith("skipped:"):  # the real samples are absent (a fresh clone)
        pytest.skip(lines[-1])
    assert re.search(r"\d", result.stdout), f"{script} printed no figures:\n{result.stdout}\n{result.stderr[-3000:]}"


def test_every_benchmark_has_a_smoke_run() -> None:
    """Unmarked, so `make test` itself fails when a new benchmark has no smoke run in CI."""
    scripts = {path.stem for path in (REPO / "benchmarks").glob("*.py") if path.name != "_shared.py"}
    assert not scripts - set(SCRIPTS), f"benchmarks without a smoke run here: {sorted(scripts - set(SCRIPTS))}"
    assert not set(SCRIPTS) - scripts, f"smoke runs of benchmarks that are gone: {sorted(set(SCRIPTS) - scripts)}"
