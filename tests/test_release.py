"""Versioned releases (issue 33, item 4), on real builds: a round frozen with `ovrsis release create`, the
next round's reviews applied by a plain rebuild, `ovrsis release diff` checked against the ledger, and a
release rebuilt from its recorded inputs in a fresh folder with the same digest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from test_audit_ledger import brush, discard, review
from typer.testing import CliRunner

from audit.ledger import append_reviews, read_ledger
from audit.records import load_records
from flows.cli import app
from flows.sample_build import make_imagery, prefect_env, run_build, write_config
from pipeline.cli.terminal import EXIT_REFUSED
from pipeline.dataset.release import read_release
from pipeline.dataset.shards import ShardReader
from pipeline.dataset.tile_table import proposed_pixels
from pipeline.files.atomic import file_sha256
from taxonomy import load_taxonomy

pytestmark = pytest.mark.slow
TAXONOMY = load_taxonomy("ovrsis95k")
runner = CliRunner()


def release(out, version: str) -> dict:
    result = runner.invoke(app, ["release", "create", str(out), version, "--licence", "CC-BY-4.0"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return read_release(out / "releases" / version)


def test_a_release_freezes_a_round_and_the_diff_of_two_rounds_is_the_ledger(tmp_path, tiny_models_yaml):
    # scene1's caption names nothing: its tiles get no proposal until a reviewer paints one
    imagery = make_imagery(tmp_path / "data" / "rasters", count=2, size=256, broken=False, unnamed=1)
    out = tmp_path / "out"
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, out, selection={"target_tiles": "all"})
    assert (first := run_build(config, tmp_path / "prefect")).returncode == 0, first.stderr[-3000:]
    one = release(out, "1.0")
    frozen = out / "releases" / "1.0"
    assert one["reviews"] == 0 and one["ledger_sha256"] is None and one["licence"] == "CC-BY-4.0"
    assert sum(one["samples"].values()) == sum(1 for _ in open(frozen / "tiles.jsonl"))
    card = (frozen / "README.md").read_text()
    assert "# Release 1.0" in card and one["digest"] in card and "## Classes" in card and "CC-BY-4.0" in card
    again = runner.invoke(app, ["release", "create", str(out), "1.0"])  # a release never changes
    assert again.exit_code == EXIT_REFUSED and "exists" in again.stderr

    records = {r.key: r for r in load_records(out) if not r.quarantine}
    empty = sorted(k for k in records if k.startswith("scene1"))
    labelled = sorted(k for k, r in records.items() if k.startswith("scene0") and r.instances)
    assert len(empty) == 4 and len(labelled) >= 2, "the tiny models proposed too little to test with"
    reviews, painted = [], 0
    for number, key in enumerate(empty):
        shown = np.asarray(Image.open(out / "masks" / f"{key}.png"))
        region = np.zeros(shown.shape, bool)
        region[10 + 5 * number : 60, 20:90] = True
        painted += int(region.sum())
        reviews.append(review(out, key, [brush("new", "building", region)], annotation=number + 1, proposal=shown))
    emptied = labelled[0]
    shown = np.asarray(Image.open(out / "masks" / f"{emptied}.png"))
    names = [TAXONOMY.categories[v].name for v in np.unique(shown) if v != 255 and TAXONOMY.categories[v].propose]
    reviews.append(review(out, emptied, [discard(*names)], annotation=99, proposal=shown))
    append_reviews(out, reviews)
    early = runner.invoke(app, ["release", "create", str(out), "1.5"])  # the shards do not hold these reviews yet
    assert early.exit_code == EXIT_REFUSED and "rebuild first" in early.stderr, early.stderr
    assert (second := run_build(config, tmp_path / "prefect")).returncode == 0, second.stderr[-3000:]
    two = release(out, "2.0")
    kept = json.loads((frozen / "manifest.json").read_text())  # the rebuild replaced the shards, not release 1.0's
    for shard in (s for info in kept["splits"].values() for s in info["shards"]):
        assert file_sha256(frozen / "shards" / shard["name"]) == shard["sha256"]
    assert two["reviews"] == 5 and two["digest"] != one["digest"]
    assert "## Human audit (Table II)" in (out / "releases" / "2.0" / "README.md").read_text()

    result = runner.invoke(app, ["release", "diff", str(frozen), str(out / "releases" / "2.0"), "--json"])
    assert result.exit_code == 0, result.stderr
    change = json.loads(result.stdout)
    assert change["added"] == empty and change["removed"] == [emptied] and change["masks_changed"] == []
    ledger = {(r.project_id, r.task_id, r.annotation_id, r.updated_at) for r in read_ledger(out)}
    added = {(r["project_id"], r["task_id"], r["annotation_id"], r["updated_at"]) for r in change["reviews_added"]}
    assert added == ledger and len(added) == 5
    before = {row["key"]: row for row in map(json.loads, open(frozen / "tiles.jsonl"))}
    expected = {name: {"gained": 0, "lost": count} for name, count in before[emptied]["pixels"].items()}
    expected.setdefault("building", {"gained": 0, "lost": 0})["gained"] += painted
    assert change["pixels_changed"] == expected  # the reviewers' pixels, exactly

    exported = runner.invoke(app, ["export", "hf", str(out), "--release", "1.0", "--dest", str(tmp_path / "hf")])
    assert exported.exit_code == 0, exported.stderr  # round 1 as it was released, after round 2's rebuild
    hf_card = (tmp_path / "hf" / "README.md").read_text()
    assert f"Release 1.0 (`ovrsis release create`), digest `{one['digest']}`" in hf_card
    assert "pretty_name: out 1.0" in hf_card and "license: CC-BY-4.0" in hf_card
    exported_samples = {
        split: sum(
            name.endswith(".json")
            for tar in (tmp_path / "hf" / "data").glob(f"{split}-*.tar")
            for name in tarfile.open(tar).getnames()
        )
        for split in one["samples"]
    }
    assert exported_samples == one["samples"]

    # the release rebuilt from its recorded inputs (imagery, configuration, the output's audit/ folder)
    fresh = tmp_path / "fresh"
    (fresh / "audit").parent.mkdir()
    shutil.copytree(out / "audit", fresh / "audit")
    config = write_config(tmp_path / "again.yaml", imagery, tiny_models_yaml, fresh, selection={"target_tiles": "all"})
    assert (third := run_build(config, tmp_path / "prefect")).returncode == 0, third.stderr[-3000:]
    assert release(fresh, "2.0")["digest"] == two["digest"]
    assert ShardReader(fresh).manifest == ShardReader(out).manifest

    # an audit round on the reviewed build: Pi-Seg (tiny) trained on the reviewed tiles ranks the rest
    ranked = runner.invoke(
        app, ["audit", "round", "--records", str(out), "--backbone", "tiny", "--iters", "2", "--count", "3"]
    )
    assert ranked.exit_code == 0, (ranked.stdout, ranked.stderr, ranked.exception)
    first_round = json.loads((out / "audit" / "rounds" / "001" / "round.json").read_text())
    records = {r.key: r for r in load_records(out) if not r.quarantine}
    reviewed = sorted(k for k, r in records.items() if r.review is not None)
    assert first_round["trained_on"] == reviewed and first_round["init"] is None
    candidates = {k for k, r in records.items() if r.review is None and proposed_pixels(r)}
    assert set(first_round["scores"]) == candidates and len(first_round["queue"]) == min(3, len(candidates))
    combined = {k: v["combined"] for k, v in first_round["scores"].items()}
    assert first_round["queue"] == sorted(combined, key=lambda k: (-combined[k], k))[:3]
    assert all(0.0 <= v["disagreement"] <= 1.0 and v["uncertainty"] >= 0.0 for v in first_round["scores"].values())
    manifest = json.loads((out / "audit" / "rounds" / "001" / "data" / "manifest.json").read_text())
    assert sum(info["samples"] for info in manifest["splits"].values()) == len(reviewed)
    again = runner.invoke(
        app, ["audit", "round", "--records", str(out), "--backbone", "tiny", "--iters", "2", "--signal", "disagreement"]
    )
    assert again.exit_code == 0, again.stderr
    second_round = json.loads((out / "audit" / "rounds" / "002" / "round.json").read_text())
    assert second_round["init"] == first_round["checkpoint"] and second_round["signal"] == "disagreement"

    # the same round as a Prefect flow run (Prefect's temporary server), its report written for the artifacts
    code = (
        "from flows.round_flow import audit_round; "
        f"print(audit_round(records={str(out)!r}, backbone='tiny', iters=2, count=2)['number'])"
    )
    flowed = subprocess.run(
        [sys.executable, "-c", code], env=prefect_env(tmp_path / "prefect"), capture_output=True, text=True, timeout=600
    )
    assert flowed.returncode == 0 and flowed.stdout.strip().splitlines()[-1] == "3", flowed.stderr[-3000:]
    third = out / "audit" / "rounds" / "003"
    assert (third / "scores.png").stat().st_size > 1000 and "| rank | tile |" in (third / "round.md").read_text()
