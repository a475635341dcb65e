"""An audit session against a real Label Studio server started by the test suite (by PID)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from audit.apply import find_project, pull
from audit.client import AuditClient
from audit.queue import push, stratified_sample
from audit.records import load_records
from audit.server import start_server, stop_server
from audit.settings import AuditError, ServerSettings
from audit.stats import write_report
from flow_helpers import make_imagery
from pipeline.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.ingest import TilingConfig
from taxonomy import load_taxonomy

pytestmark = [pytest.mark.slow, pytest.mark.server]
TOKEN = "0123456789abcdef0123456789abcdef01234567"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def build_output(tmp_path_factory, tiny_models):
    """A small annotate output: 8 tiles of two rasters with captions of two scene domains."""
    root = tmp_path_factory.mktemp("audit")
    imagery = make_imagery(root / "data" / "rasters", count=2, size=256)
    captions = root / "data" / "captions.jsonl"
    captions.write_text(json.dumps({"id": "scene0", "caption": "a residential area with buildings, a road and cars"}) + "\n"
                        + json.dumps({"id": "scene1", "caption": "a dense forest with trees, grass and a river"}) + "\n")  # fmt: skip
    out = root / "out"
    Annotator(load_taxonomy("ovrsis95k"), tiny_models, out, AnnotateConfig(tiling=TilingConfig(128)),
              captions=load_caption_file(captions)).run(imagery)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, build_output):
    if not (REPO / ".venv-ls" / "bin" / "label-studio").is_file():
        pytest.fail(".venv-ls is missing: `make test` creates the Label Studio venv")
    data = tmp_path_factory.mktemp("lsdata")
    started = start_server(data, build_output, TOKEN, "admin@example.com", "audit-test-pw", port=free_port())
    yield started
    stop_server(started.pid)


def prediction_regions(client: AuditClient, task_id: int) -> list[dict]:
    (prediction,) = client.sdk.predictions.list(task=task_id)
    return prediction.result


def test_audit_session_push_review_pull_stats(server, build_output, tmp_path):
    client = AuditClient(ServerSettings(server.url, TOKEN))
    client.check()
    taxonomy = load_taxonomy("ovrsis95k")
    records = [r for r in load_records(build_output) if not r.quarantine]
    chosen = stratified_sample(records, 6, seed=1)
    first = push(client, build_output, taxonomy, chosen, "audit test", build_output)
    assert first.created == 6 and len(first.task_ids) == 6
    again = push(client, build_output, taxonomy, chosen, "audit test", build_output)
    assert again.created == 0 and again.already_there == 6  # no duplicates: task identity is the record key
    project = find_project(client, "audit test")
    tasks = client.sdk.projects.exports.as_json(project)
    assert len(tasks) == 6
    image = client.sdk.tasks.get(tasks[0]["id"]).data["image"]
    assert image.startswith("/data/local-files/?d=audit/images/")
    assert (build_output / "audit" / "images" / f"{tasks[0]['data']['key']}.jpg").is_file()

    by_key = {t["data"]["key"]: t for t in tasks}
    regions = {k: prediction_regions(client, t["id"]) for k, t in by_key.items()}

    def regions_of(task: dict) -> list[dict]:
        return regions[task["data"]["key"]]

    keys = sorted(k for k, t in by_key.items() if len(regions_of(t)) >= 2)
    assert len(keys) >= 4, "need tiles with two proposed categories"
    accept, repaint, discard, relabel = keys[:4]
    reviews = {}
    reviews[accept] = regions_of(by_key[accept])
    first_region, *rest = regions_of(by_key[repaint])
    height, width = first_region["original_height"], first_region["original_width"]
    proposed_pixels = decode_rle(first_region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127
    half = proposed_pixels.copy()
    half[: height // 2] = False
    repainted = dict(first_region, value=dict(first_region["value"], rle=mask2rle((half * 255).astype(np.uint8))))
    reviews[repaint] = [repainted, *rest]
    dropped = regions_of(by_key[discard])[0]["value"]["brushlabels"][0]
    reviews[discard] = regions_of(by_key[discard]) + [{"id": "c1", "from_name": "discard", "to_name": "image",
                                                        "type": "choices", "value": {"choices": [dropped]}}]  # fmt: skip
    moved = regions_of(by_key[relabel])[0]
    old_label = moved["value"]["brushlabels"][0]
    new_label = "bareland" if old_label != "bareland" else "grass"
    reviews[relabel] = [dict(moved, value=dict(moved["value"], brushlabels=[new_label]))] + regions_of(by_key[relabel])[1:]
    for key, result in reviews.items():
        client.sdk.annotations.create(id=by_key[key]["id"], result=result)

    summary = pull(client, project, build_output, taxonomy)
    assert summary.reviewed == 4 and summary.pending == 2 and summary.export.is_file()
    after = {r.key: r for r in load_records(build_output)}
    assert all(d.state == "accepted" for d in after[accept].audit)
    mask_decision = next(d for d in after[repaint].audit if d.target == f"mask:{first_region['value']['brushlabels'][0]}")
    expected_iou = half.sum() / proposed_pixels.sum()
    assert mask_decision.state == "corrected" and mask_decision.mask_iou == pytest.approx(expected_iou, abs=1e-6)
    assert (build_output / "masks" / f"{repaint}.proposed.png").is_file()
    reviewed_mask = np.asarray(Image.open(build_output / "masks" / f"{repaint}.png"))
    assert (reviewed_mask[: height // 2][proposed_pixels[: height // 2]] == 255).all()
    discarded = next(d for d in after[discard].audit if d.target == f"category:{dropped}")
    assert discarded.state == "discarded" and dropped not in {c.name for c in after[discard].categories}
    assert (np.asarray(Image.open(build_output / "masks" / f"{discard}.png")) != taxonomy.index_of(dropped)).all()
    corrected = next(d for d in after[relabel].audit if d.target == f"category:{old_label}")
    assert corrected.state == "corrected" and corrected.corrected_to == new_label
    pending = [k for k in by_key if k not in reviews]
    assert all(d.state == "pending" for k in pending for d in after[k].audit)
    assert after[accept].audit[0].reviewer == "admin@example.com"

    records_before = (build_output / "records.jsonl").read_bytes()
    masks_before = {p.name: p.read_bytes() for p in (build_output / "masks").glob("*.png")}
    second = pull(client, project, build_output, taxonomy)  # idempotent: same records, same masks, another export
    assert (build_output / "records.jsonl").read_bytes() == records_before
    assert {p.name: p.read_bytes() for p in (build_output / "masks").glob("*.png")} == masks_before
    assert second.export != summary.export and second.export.is_file()

    # a task deleted in the UI: the next pull leaves that tile's reviewed decisions as they were
    client.sdk.tasks.delete(id=str(by_key[accept]["id"]))
    third = pull(client, project, build_output, taxonomy)
    assert third.tasks == 5 and {r.key: r for r in load_records(build_output)}[accept].audit == after[accept].audit

    stats = write_report(load_records(build_output), tmp_path / "report")
    table = stats["table"]
    n_proposed = sum(len([d for d in after[k].audit if d.target.startswith("category:")]) for k in reviews)
    assert table["audited images"] == 4
    assert table["category discarded"]["count"] == 1 and table["category corrected"]["count"] == 1
    assert table["category accepted"]["of"] == n_proposed and table["category accepted"]["count"] == n_proposed - 2
    assert table["mask corrected"]["count"] == 1 and table["false-positive ratio"]["count"] == 1
    assert (tmp_path / "report" / "audit_stats.md").read_text().count("Wilson") >= 1
    assert (tmp_path / "report" / "iou.png").read_bytes()[:4] == b"\x89PNG"


def test_wrong_token_unreachable_server_and_outside_root(server, build_output, tmp_path):
    bad = AuditClient(ServerSettings(server.url, "f" * 40), retries=2, backoff=0.05)
    with pytest.raises(AuditError, match="refused the API token") as error:
        bad.check()
    assert "f" * 8 not in str(error.value)
    down = AuditClient(ServerSettings(f"http://127.0.0.1:{free_port()}", TOKEN), retries=3, backoff=0.05)
    with pytest.raises(AuditError, match="unreachable while checking the connection after 3 tries"):
        down.check()
    client = AuditClient(ServerSettings(server.url, TOKEN))
    records = [r for r in load_records(build_output) if not r.quarantine][:1]
    with pytest.raises(AuditError, match="outside the served root"):
        push(client, build_output, load_taxonomy("ovrsis95k"), records, "outside root", tmp_path)


def test_flow_pushes_a_queue_and_shards_the_reviews(server, build_output, tmp_path, tiny_models_yaml):
    """audit.push_sample queues tiles after sharding; a rebuild with audit.pull shards the reviewed masks."""
    import subprocess

    import yaml

    from flow_helpers import ovrsis, prefect_env, write_config
    from pipeline.shards import ShardReader

    imagery = make_imagery(tmp_path / "data" / "rasters", count=1, size=256)
    output = build_output / "flow-build"  # under the folder the server serves
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, output,
                          audit={"push_sample": 2, "seed": 0, "project": "flow audit", "url": server.url})  # fmt: skip
    env = prefect_env(tmp_path / "prefect") | {"LABEL_STUDIO_USER_TOKEN": TOKEN}
    first = subprocess.run(ovrsis("build", "--config", str(config)), env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    client = AuditClient(ServerSettings(server.url, TOKEN))
    project = find_project(client, "flow audit")
    tasks = client.sdk.projects.exports.as_json(project)
    assert len(tasks) == 2
    task = tasks[0]
    (prediction,) = client.sdk.predictions.list(task=task["id"])
    dropped = prediction.result[0]["value"]["brushlabels"][0]
    discard = {"id": "c", "from_name": "discard", "to_name": "image", "type": "choices", "value": {"choices": [dropped]}}
    client.sdk.annotations.create(id=task["id"], result=[*prediction.result, discard])
    settings = yaml.safe_load(config.read_text())
    settings["audit"] = {"pull": True, "project": "flow audit", "url": server.url}
    config.write_text(yaml.safe_dump(settings))
    second = subprocess.run(ovrsis("build", "--config", str(config)), env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    reader = ShardReader(output)
    assert reader.manifest["audit_round"].startswith("reviews:1:")
    taxonomy = load_taxonomy("ovrsis95k")
    reviewed = next(s for split in ("train", "val") for s in reader.samples(split) if s.key == task["data"]["key"])
    assert not (reviewed.mask == taxonomy.index_of(dropped)).any()
    assert any(d["state"] == "discarded" for d in reviewed.record["audit"])
