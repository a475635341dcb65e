"""An audit session against a real Label Studio server started by the test suite (by PID): two queues,
reviews in both, the ledger, a rebuild with the server stopped, a SIGKILLed pull, a refused push."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from audit.client import AuditClient, find_project
from audit.folders import folder_line
from audit.ledger import ledger_path, read_ledger
from audit.queue import label_config, push
from audit.records import load_records, write_records
from audit.server import stop_server
from audit.session import QueuePlan, apply_ledger, pull_queues, push_queues
from audit.settings import AuditError, ServerSettings
from audit.stats import write_report
from flows.sample_build import make_imagery, ovrsis
from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.raster.ingest import TilingConfig
from pipeline.raster.outputs import mask_digest
from taxonomy import load_taxonomy
from tests.servers import TOKEN, free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]
REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@pytest.fixture(scope="module")
def build_output(tmp_path_factory, tiny_models):
    """A small annotate output: 8 tiles of two rasters with captions of two scene domains."""
    root = tmp_path_factory.mktemp("audit")
    imagery = make_imagery(root / "data" / "rasters", count=2, size=256)
    captions = root / "data" / "captions.jsonl"
    captions.write_text(
        json.dumps({"id": "scene0", "caption": "a residential area with buildings, a road and cars"})
        + "\n"
        + json.dumps({"id": "scene1", "caption": "a dense forest with trees, grass and a river"})
        + "\n"
    )
    out = root / "out"
    Annotator(
        load_taxonomy("ovrsis95k"),
        tiny_models,
        out,
        AnnotateConfig(tiling=TilingConfig(128)),
        captions=load_caption_file(captions),
    ).run(imagery)
    return out


@pytest.fixture(scope="module")
def served_root(build_output):
    """The module's Label Studio (the `label_studio` fixture) serves the build output."""
    return build_output


def prediction_regions(client: AuditClient, task_id: int) -> list[dict]:
    (prediction,) = client.sdk.predictions.list(task=task_id)
    return prediction.result


def tasks_by_key(client: AuditClient, title: str) -> dict[str, dict]:
    return {t["data"]["key"]: t for t in client.sdk.projects.exports.as_json(find_project(client, title))}


def test_audit_session_two_queues_ledger_and_table_ii(label_studio, build_output, tmp_path):
    client = AuditClient(ServerSettings(label_studio.url, TOKEN))
    client.check()
    taxonomy = load_taxonomy("ovrsis95k")
    plan = QueuePlan(sample=8, seed=1, uncertain=2)  # every tile in the sample, two of them in the uncertain queue too
    first = dict(push_queues(client, build_output, taxonomy, "audit test", build_output, plan))
    assert first["audit test"].created == 8 and first["audit test (uncertain)"].created == 2
    again = dict(push_queues(client, build_output, taxonomy, "audit test", build_output, plan))
    assert {s.created for s in again.values()} == {0}  # no duplicates: task identity is the record key
    sample, uncertain = tasks_by_key(client, "audit test"), tasks_by_key(client, "audit test (uncertain)")
    image = client.sdk.tasks.get(next(iter(sample.values()))["id"]).data["image"]
    assert image.startswith("/data/local-files/?d=audit/images/")

    regions = {k: prediction_regions(client, t["id"]) for k, t in sample.items()}
    both = sorted(uncertain)
    keys = sorted(k for k in sample if len(regions[k]) >= 2 and k not in both)
    assert len(keys) >= 4, "need tiles with two proposed categories"
    accept, repaint, discard, relabel = keys[:4]
    reviews = {accept: regions[accept]}
    first_region, *rest = regions[repaint]
    height, width = first_region["original_height"], first_region["original_width"]
    proposed_pixels = decode_rle(first_region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127
    half = proposed_pixels.copy()
    half[: height // 2] = False
    reviews[repaint] = [
        dict(first_region, value=dict(first_region["value"], rle=mask2rle((half * 255).astype(np.uint8)))),
        *rest,
    ]
    dropped = regions[discard][0]["value"]["brushlabels"][0]
    reviews[discard] = regions[discard] + [discard_choice(dropped)]
    moved = regions[relabel][0]
    old_label = moved["value"]["brushlabels"][0]
    new_label = "bareland" if old_label != "bareland" else "grass"
    reviews[relabel] = [dict(moved, value=dict(moved["value"], brushlabels=[new_label]))] + regions[relabel][1:]
    for key, result in reviews.items():
        client.sdk.annotations.create(id=sample[key]["id"], result=result)
    # a tile reviewed in both queues: the later review (uncertain, accepting all) wins over the earlier discard
    twice, skipped = both[0], both[1]
    twice_regions = prediction_regions(client, uncertain[twice]["id"])
    client.sdk.annotations.create(
        id=sample[twice]["id"], result=[*twice_regions, discard_choice(twice_regions[0]["value"]["brushlabels"][0])]
    )
    time.sleep(1.1)
    client.sdk.annotations.create(id=uncertain[twice]["id"], result=twice_regions)
    # a tile reviewed in the sample and skipped in the uncertain queue stays reviewed
    skipped_regions = prediction_regions(client, sample[skipped]["id"])
    client.sdk.annotations.create(id=sample[skipped]["id"], result=skipped_regions)
    client.sdk.annotations.create(id=uncertain[skipped]["id"], result=[], was_cancelled=True)

    pulled = pull_queues(client, build_output, "audit test")
    assert [(s.project, s.new_reviews) for s in pulled] == [("audit test", 6), ("audit test (uncertain)", 1)]
    assert ledger_path(build_output).read_text().count("\n") == 7
    applied = apply_ledger(build_output, taxonomy)
    assert (applied.reviewed, applied.stale) == (6, 0)
    after = {r.key: r for r in load_records(build_output)}
    assert all(d.state == "accepted" for d in after[accept].audit) and after[accept].review.queue == "sample"
    mask_decision = next(
        d for d in after[repaint].audit if d.target == f"mask:{first_region['value']['brushlabels'][0]}"
    )
    assert (mask_decision.state, mask_decision.kind) == ("corrected", "filtering")
    assert mask_decision.mask_iou == pytest.approx(half.sum() / proposed_pixels.sum(), abs=1e-6)
    assert (build_output / "masks" / f"{repaint}.proposed.png").is_file()
    reviewed_mask = np.asarray(Image.open(build_output / "masks" / f"{repaint}.png"))
    assert (reviewed_mask[: height // 2][proposed_pixels[: height // 2]] == 255).all()
    discarded = next(d for d in after[discard].audit if d.target == f"category:{dropped}")
    assert discarded.state == "discarded" and dropped not in {c.name for c in after[discard].categories}
    assert (np.asarray(Image.open(build_output / "masks" / f"{discard}.png")) != taxonomy.index_of(dropped)).all()
    corrected = next(d for d in after[relabel].audit if d.target == f"category:{old_label}")
    assert corrected.state == "corrected" and corrected.corrected_to == new_label
    assert after[twice].review.queue == "uncertain" and all(d.state == "accepted" for d in after[twice].audit)
    assert after[skipped].review.queue == "sample" and all(d.state != "pending" for d in after[skipped].audit)
    pending = [k for k in set(sample) | set(uncertain) if k not in reviews and k not in (twice, skipped)]
    assert pending and all(d.state == "pending" for k in pending for d in after[k].audit)
    assert after[accept].audit[0].reviewer == "admin@example.com"

    records_before = (build_output / "records.jsonl").read_bytes()
    masks_before = {p.name: p.read_bytes() for p in (build_output / "masks").glob("*.png")}
    ledger_before = ledger_path(build_output).read_bytes()
    assert {s.new_reviews for s in pull_queues(client, build_output, "audit test")} == {
        0
    }  # pulling twice appends nothing
    apply_ledger(build_output, taxonomy)
    assert ledger_path(build_output).read_bytes() == ledger_before
    assert (build_output / "records.jsonl").read_bytes() == records_before
    assert {p.name: p.read_bytes() for p in (build_output / "masks").glob("*.png")} == masks_before

    # a task deleted in the UI: its review stays in the ledger, and so in the records
    client.sdk.tasks.delete(id=str(sample[accept]["id"]))
    pull_queues(client, build_output, "audit test")
    apply_ledger(build_output, taxonomy)
    assert {r.key: r for r in load_records(build_output)}[accept].audit == after[accept].audit

    # a later build proposes something else for a reviewed tile: the review is stale, --stale re-queues it once
    proposed = build_output / "masks" / f"{repaint}.proposed.png"
    changed = np.asarray(Image.open(proposed)).copy()
    changed[0, 0] = taxonomy.index_of("bareland") if changed[0, 0] != taxonomy.index_of("bareland") else 255
    Image.fromarray(changed).save(proposed)
    rebuilt = load_records(build_output)
    next(r for r in rebuilt if r.key == repaint).proposal_digest = mask_digest(changed)  # as the build records it
    write_records(build_output, rebuilt)
    assert apply_ledger(build_output, taxonomy).stale == 1
    stale_plan = QueuePlan(sample=0, stale=True)
    ((title, requeued),) = push_queues(client, build_output, taxonomy, "audit test", build_output, stale_plan)
    assert (title, requeued.created) == ("audit test (stale)", 1)
    assert tasks_by_key(client, title)[repaint]["data"]["queue"] == "stale"
    assert push_queues(client, build_output, taxonomy, "audit test", build_output, stale_plan)[0][1].created == 0

    stats = write_report(build_output, tmp_path / "report", taxonomy)
    table = stats["queues"]["sample"]["table"]
    proposals = sum(
        taxonomy.categories[taxonomy.index_of(r["value"]["brushlabels"][0])].propose  # (the background is no proposal)
        for k in (accept, repaint, discard, relabel, skipped, twice)
        for r in regions[k]
    )
    assert table["audited images"] == 6 and table["category accepted"]["of"] == proposals
    assert table["category discarded"]["count"] == 2 and table["category corrected"]["count"] == 1
    assert table["false-positive ratio"]["count"] == 2 and table["false-positive ratio"]["of"] == proposals
    assert table["mask correction: filtering"]["count"] == 1
    assert stats["queues"]["uncertain"]["table"]["audited images"] == 1 and table["stale reviews"] == 1
    assert (tmp_path / "report" / "iou-sample.png").read_bytes()[:4] == b"\x89PNG"


def discard_choice(name: str) -> dict:
    return {"id": "c1", "from_name": "discard", "to_name": "image", "type": "choices", "value": {"choices": [name]}}


def claim(client: AuditClient, title: str, *folders: Path) -> None:
    """Mark the audit's projects as the audit of `folders` too (the line a refused pull names)."""
    for project in client.sdk.projects.list():
        if project.title == title or project.title.startswith(f"{title} ("):
            lines = "".join(f"\n{folder_line(folder)}" for folder in folders)
            client.sdk.projects.update(id=project.id, description=(project.description or "") + lines)


def test_sigkill_mid_pull_then_rerun_gives_the_same_ledger(label_studio, build_output, tmp_path):
    """A pull killed as soon as it starts writing the ledger; the rerun completes it, nothing twice."""
    copy, uninterrupted = tmp_path / "copy", tmp_path / "uninterrupted"
    for folder in (copy, uninterrupted):
        shutil.copytree(
            build_output, folder, ignore=shutil.ignore_patterns("ledger.jsonl", "pulls.jsonl", "*.proposed.png")
        )
    bare = tmp_path / "bare"  # no records at all (a first build pulling before it wrote any): every review is kept
    (bare / "audit").mkdir(parents=True)
    client = AuditClient(ServerSettings(label_studio.url, TOKEN))
    with pytest.raises(AuditError, match="is not the audit of"):  # copies are other folders, until claimed
        pull_queues(client, bare, "audit test")
    claim(client, "audit test", copy, uninterrupted, bare)
    pull_queues(client, uninterrupted, "audit test")
    reference = {r.identity for r in read_ledger(uninterrupted)}
    assert reference
    pull_queues(client, bare, "audit test")
    assert {r.identity for r in read_ledger(bare)} == reference
    env = dict(os.environ, LABEL_STUDIO_USER_TOKEN=TOKEN)
    command = [
        str(REPO / ".venv" / "bin" / "ovrsis"),
        "audit",
        "pull",
        "--records",
        str(copy),
        "--project",
        "audit test",
        "--url",
        label_studio.url,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ledger_path(copy).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    lines = ledger_path(copy).read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)
    assert {r.identity for r in read_ledger(copy)} == reference and len(lines) == len(reference)


def test_wrong_token_unreachable_server_and_refused_then_correct_push(label_studio, build_output, tmp_path):
    bad = AuditClient(ServerSettings(label_studio.url, "f" * 40), retries=2, backoff=0.05)
    with pytest.raises(AuditError, match="refused the API token") as error:
        bad.check()
    assert "f" * 8 not in str(error.value)
    down = AuditClient(ServerSettings(f"http://127.0.0.1:{free_port()}", TOKEN), retries=3, backoff=0.05)
    with pytest.raises(AuditError, match="unreachable while checking the connection after 3 tries"):
        down.check()
    client = AuditClient(ServerSettings(label_studio.url, TOKEN))
    taxonomy = load_taxonomy("ovrsis95k")
    records = [r for r in load_records(build_output) if not r.quarantine][:2]
    with pytest.raises(AuditError, match="outside the served root"):
        push(client, build_output, taxonomy, records, "outside root", tmp_path)
    assert find_project(client, "outside root") is None  # refused before anything was created
    # a project left without storage (as an interrupted push of an older version left it): storage is connected
    client.sdk.projects.create(
        title="no storage", label_config=label_config(taxonomy), description=folder_line(build_output)
    )
    pushed = push(client, build_output, taxonomy, records, "no storage", build_output)
    assert pushed.created == 2
    (storage,) = client.sdk.import_storage.local.list(project=pushed.project_id)
    assert Path(storage.path) == (build_output / "audit" / "images").resolve()
    image = client.sdk.tasks.get(pushed.task_ids[0]).data["image"]
    request = urllib.request.Request(label_studio.url + image, headers={"Authorization": f"Token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.read()[:2] == b"\xff\xd8"  # the tile's JPEG loads


def audit_pull(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ovrsis audit pull` of the output, project and server a build configuration names."""
    import yaml

    settings = yaml.safe_load(config.read_text())
    project, url = settings["audit"]["project"], settings["audit"]["url"]
    command = ovrsis("audit", "pull", "--records", settings["output"], "--project", project, "--url", url)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def build_pull_rebuild(
    config: Path,
    env: dict[str, str],
    review: Callable[[], T],
    change: Callable[[dict], object],
    finished: tuple[int, ...] = (0,),
) -> T:
    """`ovrsis build` with `config` (it pushes the audit queues), `review()` in Label Studio, `ovrsis audit
    pull`, `change(settings)` to the configuration, `ovrsis build` again. Both builds must exit with one of
    `finished`, the pull with 0. Returns what `review` returned."""
    import yaml

    def build(what: str) -> None:
        built = subprocess.run(
            ovrsis("build", "--config", str(config)), env=env, capture_output=True, text=True, timeout=600
        )
        assert built.returncode in finished, f"{what}: {built.stderr[-3000:]}"

    build("the first build")
    reviewed = review()
    pulled = audit_pull(config, env)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    settings = yaml.safe_load(config.read_text())
    change(settings)
    config.write_text(yaml.safe_dump(settings))
    build("the rebuild")
    return reviewed


def test_flow_reviews_in_both_queues_survive_a_rebuild_with_the_server_stopped(
    label_studio, build_output, tmp_path, tiny_models_yaml
):
    """Build + push two queues; review both; `ovrsis audit pull`; stop the server; rebuild with the
    cache wiped and a threshold changed (no audit.pull): the shards carry the reviewed masks and
    categories. Then restart the server on the same database: a pull finds nothing new."""
    from flows.sample_build import prefect_env, write_config
    from pipeline.dataset.shards import ShardReader

    imagery = make_imagery(tmp_path / "data" / "rasters", count=1, size=256)
    output = build_output / "flow-build"  # under the folder the server serves
    config = write_config(
        tmp_path / "build.yaml",
        imagery,
        tiny_models_yaml,
        output,
        audit={"push_sample": 2, "uncertain": 1, "seed": 0, "project": "flow audit", "url": label_studio.url},
    )
    env = prefect_env(tmp_path / "prefect") | {"LABEL_STUDIO_USER_TOKEN": TOKEN}
    client = AuditClient(ServerSettings(label_studio.url, TOKEN))
    taxonomy = load_taxonomy("ovrsis95k")

    def review() -> dict[str, str]:
        dropped = {}
        for title in ("flow audit", "flow audit (uncertain)"):
            task = sorted(tasks_by_key(client, title).values(), key=lambda t: t["data"]["key"])[0]
            regions = prediction_regions(client, task["id"])
            dropped[task["data"]["key"]] = regions[0]["value"]["brushlabels"][0]
            client.sdk.annotations.create(
                id=task["id"], result=[*regions, discard_choice(regions[0]["value"]["brushlabels"][0])]
            )
        return dropped

    def stop_and_change(settings: dict) -> None:
        stop_server(label_studio.pid)
        settings["audit"] = {"project": "flow audit", "url": label_studio.url}  # no pull, no push: the server is down
        settings["merge"] = {**settings.get("merge", {}), "min_area": 33}
        shutil.rmtree(output / ".cache", ignore_errors=True)

    dropped = build_pull_rebuild(config, env, review, stop_and_change, finished=(0, 1))  # 1: some tiles quarantined
    reader = ShardReader(output)
    assert reader.manifest["audit_round"].startswith(f"reviews:{len(dropped)}:")
    samples = {s.key: s for split in ("train", "val") for s in reader.samples(split)}
    for key, name in dropped.items():
        if key in samples:  # (selection may leave a tile out; the record and mask below are checked anyway)
            assert not (samples[key].mask == taxonomy.index_of(name)).any()
            assert name not in {c["name"] for c in samples[key].record["categories"]}
            assert samples[key].record["review"]["annotation_id"] > 0
    records = {r.key: r for r in load_records(output)}
    for key, name in dropped.items():
        assert any(d.target == f"category:{name}" and d.state == "discarded" for d in records[key].audit)
        assert not (np.asarray(Image.open(output / "masks" / f"{key}.png")) == taxonomy.index_of(name)).any()
        assert (output / "masks" / f"{key}.proposed.png").is_file()

    label_studio.start()  # again: the same database, served root and port
    ledger_before = ledger_path(output).read_bytes()
    again = audit_pull(config, env)
    assert again.returncode == 0 and "0 new review(s)" in again.stderr, again.stderr[-3000:]
    assert ledger_path(output).read_bytes() == ledger_before
    status = subprocess.run(
        ovrsis("audit", "status", "--records", str(output)),
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="200"),
    )
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in status.stdout.splitlines()
        if line.count("│") > 5
    }
    assert status.returncode == 0, status.stderr
    assert rows["sample"][:4] == ["2", "1", "1", "0"] and rows["uncertain"][:4] == ["1", "1", "0", "0"], status.stdout
    assert rows["uncertain"][4] == "admin@example.com" and rows["sample"][5] != "never", status.stdout


def test_tiles_a_reviewer_labels_in_the_unlabelled_queue_reach_the_shards(
    label_studio, build_output, tmp_path, tiny_models_yaml
):
    """The session the issue scripted: tiles whose captions named nothing get no proposal; `audit.unlabelled`
    queues them; a reviewer paints a building on each in Label Studio; `ovrsis audit pull`; a plain rebuild
    (no server needed). Every painted tile is in the shards with the painted pixels, the balance report's
    selected column equals the manifest, and the random sample never spent a task on an unlabelled tile."""
    from flows.sample_build import prefect_env, write_config
    from pipeline.dataset.shards import ShardReader

    # scene1's caption names nothing: its tiles get no proposal until a reviewer paints one
    imagery = make_imagery(tmp_path / "data" / "rasters", count=2, size=256, broken=False, unnamed=1)
    output = build_output / "unlabelled-build"  # under the folder the server serves
    audit = {"push_sample": 3, "unlabelled": 4, "seed": 0, "project": "unlabelled audit", "url": label_studio.url}
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, output, audit=audit)
    env = prefect_env(tmp_path / "prefect") | {"LABEL_STUDIO_USER_TOKEN": TOKEN}
    client = AuditClient(ServerSettings(label_studio.url, TOKEN))

    def paint_a_building_on_each_unlabelled_tile() -> dict[str, int]:
        empty = {k for k in tasks_by_key(client, "unlabelled audit (unlabelled)")}
        assert empty == {r.key for r in load_records(output) if r.key.startswith("scene1")}
        assert not empty & set(tasks_by_key(client, "unlabelled audit"))  # the sample: tiles with a proposal only
        painted = {}
        for task in tasks_by_key(client, "unlabelled audit (unlabelled)").values():
            height = width = 128
            region = np.zeros((height, width), bool)
            region[20:70, 30:100] = True
            painted[task["data"]["key"]] = int(region.sum())
            value = {"format": "rle", "rle": mask2rle((region * 255).astype(np.uint8)), "brushlabels": ["building"]}
            building = {
                "id": "painted",
                "from_name": "mask",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "value": value,
            }
            client.sdk.annotations.create(id=task["id"], result=[building])
        return painted

    def plain_rebuild(settings: dict) -> None:
        del settings["audit"]  # a plain rebuild: no pull, no push

    painted = build_pull_rebuild(config, env, paint_a_building_on_each_unlabelled_tile, plain_rebuild)

    reader = ShardReader(output)
    samples = {s.key: s for split in ("train", "val") for s in reader.samples(split)}
    taxonomy = load_taxonomy("ovrsis95k")
    for key, pixels in painted.items():
        assert key in samples, f"{key}: painted by a reviewer, missing from the shards"
        assert int((samples[key].mask == taxonomy.index_of("building")).sum()) == pixels
    report = (output / "report" / "balance.md").read_text()
    background = {c.name for c in taxonomy.categories if not c.propose}
    selected = {}
    for line in report.split("## Categories", 1)[1].split("## Domains", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[2].isdigit() and int(cells[2]):
            selected[cells[0]] = (int(cells[2]), int(cells[4]))
    manifest = reader.manifest["categories"]
    assert selected == {
        n: (c["images"], c["pixels"]) for n, c in manifest.items() if c["images"] and n not in background
    }

    # the next round: Pi-Seg (tiny) trained on the painted tiles ranks the rest, and the queue is pushed in order
    command = ovrsis(
        "audit", "round", "--records", str(output), "--backbone", "tiny", "--iters", "2", "--count", "3",
        "--push", "--project", "unlabelled audit", "--url", label_studio.url, "--disagreement", "0",
    )  # fmt: skip
    ranked = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    queue = json.loads((output / "audit" / "rounds" / "001" / "round.json").read_text())["queue"]
    sampled = set(tasks_by_key(client, "unlabelled audit"))  # open tasks of the random sample
    assert queue and len(queue) <= 3 and not set(queue) & (set(painted) | sampled)  # never reviewed or queued twice
    tasks = tasks_by_key(client, "unlabelled audit (ranked)")
    assert sorted(tasks, key=lambda key: tasks[key]["id"]) == queue  # imported in the ranked order
    summary = json.loads((output / "audit" / "rounds" / "001" / "round.json").read_text())
    for key in queue:  # the model's mask beside the build's proposal, each named for what it is
        by_version = {p.model_version: p for p in client.sdk.predictions.list(task=tasks[key]["id"])}
        label = f"pi-seg round 1: disagrees with the proposal (IoU {1 - summary['scores'][key]['disagreement']:.2f})"
        assert set(by_version) == {"ovrsis-build", label}, set(by_version)
        predicted = np.asarray(Image.open(output / "audit" / "rounds" / "001" / "predictions" / f"{key}.png"))
        regions = {r["value"]["brushlabels"][0] for r in by_version[label].result}
        assert regions == {taxonomy.categories[v].name for v in np.unique(predicted)}
        assert all(r["id"].startswith("m") for r in by_version[label].result)
