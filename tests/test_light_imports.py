"""Light modules stay light: reading records, ledgers, shards, configurations and the taxonomy
imports no model, GIS or server library (each module imported alone, in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "rasterio", "prefect", "label_studio_sdk", "sentence_transformers", "spacy")
LIGHT = {
    "taxonomy": HEAVY,
    "pipeline.dataset.records": HEAVY,
    "pipeline.files.atomic": HEAVY,
    "pipeline.stages.registry": HEAVY,
    "pipeline.dataset.record_store": HEAVY,
    "pipeline.dataset.tile_table": HEAVY,
    "pipeline.raster.tiling": HEAVY,
    "audit.ledger": HEAVY,
    # webdataset imports torch when it is installed; the shard reader needs no GIS or server library
    "pipeline.dataset.shards": (
        "transformers",
        "rasterio",
        "prefect",
        "label_studio_sdk",
        "sentence_transformers",
        "spacy",
    ),
    "pipeline.build.config": HEAVY,  # the build configuration parser
    "flows.cli": HEAVY,  # `ovrsis --help` and every command's start: sub-commands import what they use
}


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_module_imports_no_heavy_library(module):
    code = (
        f"import sys, json; import {module}; "
        f"print(json.dumps(sorted(m for m in {LIGHT[module]!r} if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], f"import {module} loads heavy libraries"
