"""Presets resolve to pinned hub ids; `ovrsis models check|fetch` against a local Hugging Face cache
made of the tiny twins (no network: fetch runs with HF_HUB_OFFLINE=1), and a build from that cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.models.config import load_models_config
from pipeline.models.presets import PRESETS

PINNED = {
    "default": ["florence-community/Florence-2-large", "IDEA-Research/grounding-dino-base", "facebook/sam-vit-base"],
    "fast": [
        "florence-community/Florence-2-base",
        "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
        "facebook/sam2.1-hiera-small",
    ],
    "best": [
        "florence-community/Florence-2-large",
        "openmmlab-community/mm_grounding_dino_base_all",
        "facebook/sam2.1-hiera-large",
    ],
}


@pytest.mark.parametrize("preset", PINNED)
def test_presets_resolve_to_pinned_ids(preset):
    config = load_models_config(preset)
    weights = [w for stage in ("captioner", "detector", "segmenter") for w in getattr(config, stage).weights()]
    assert [w.repo_id for w in weights] == PINNED[preset]
    assert all(w.revision for w in weights), "every preset model names its revision"


def hub_cache(cache: Path, preset: str, twins: dict) -> None:
    """The preset's repositories in the Hugging Face cache layout, each holding its backend's tiny twin."""
    for stage, spec in PRESETS[preset].items():
        org, name = spec["model"].split("/")
        repo = cache / f"models--{org}--{name}"
        commit = hashlib.sha1(spec["model"].encode()).hexdigest()  # a stand-in commit for this test cache
        shutil.copytree(twins[stage][spec["backend"]]["model"], repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / spec["revision"]).write_text(commit)


# One process for every offline command: HF_HUB_OFFLINE and HF_HUB_CACHE are read when huggingface_hub is imported.
OFFLINE_COMMANDS = """
import json, sys
from typer.testing import CliRunner
from flows.cli import app
results = (CliRunner().invoke(app, a) for a in json.loads(sys.argv[1]))
print(json.dumps([(r.exit_code, r.stdout, r.stderr) for r in results]))
"""


def ovrsis_offline(commands: list[list[str]], cache: Path) -> list[tuple[int, str, str]]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_COMMANDS, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_check_fetch_and_build_offline_from_a_local_cache(tmp_path, tiny_models_yaml):
    twins = yaml.safe_load((tiny_models_yaml.parent / "twins.yaml").read_text())
    cache = tmp_path / "hub"
    hub_cache(cache, "fast", twins)
    runner = CliRunner()
    complete = runner.invoke(app, ["models", "check", "fast", "--cache", str(cache)])
    assert complete.exit_code == 0 and "fast: complete" in complete.stdout
    listing = runner.invoke(app, ["models", "check", "--cache", str(cache)])
    assert listing.exit_code == 1 and "fast: complete" in listing.stdout
    assert "default: missing florence-community/Florence-2-large@main (not in the cache)" in listing.stdout
    assert runner.invoke(app, ["models", "check", "nope"]).exit_code == 2

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "tile.png")
    fetched, offline, built = ovrsis_offline(
        [
            ["models", "fetch", "fast", "--to", str(cache)],
            ["models", "fetch", "best", "--to", str(tmp_path / "empty")],
            ["annotate", str(tmp_path / "tile.png"), "--out", str(tmp_path / "out"), "--models", "fast"],
        ],
        cache,
    )
    assert fetched[0] == 0, fetched[2]
    assert "facebook/sam2.1-hiera-small@main -> " in fetched[1] and "fast: complete" in fetched[1]
    assert offline[0] == 1 and "openmmlab-community/mm_grounding_dino_base_all@main" in offline[2]
    assert built[0] == 0, built[2]
    record = json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[0])
    assert record["captions"][0]["model"] == "florence-community/Florence-2-base"  # the hub id, resolved from the cache
