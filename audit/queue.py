"""Review queues: a reproducible, domain-stratified sample of tiles pushed to Label Studio.

Each task shows the tile, the proposed categories (with a choice to discard any of them), the
merge's overlap conflicts as a note, and one editable brush region per proposed category, sent as a
prediction (label_studio_sdk's brush RLE). Region ids are `r{category index}`, so a pull knows
which proposal each reviewed region came from. Task identity is the record key (`data.key`):
pushing the same records twice creates no duplicates. Images are served by local-files storage,
never uploaded; a path outside the served root is refused, and the path in a task's image URL is
percent-encoded (a raster named `odd&name #1+%.tif` is still found). A push uses only a project of
its own output folder (audit/folders.py).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from audit.client import AuditClient
from audit.decisions import proposed_categories
from audit.folders import folder_project, project_description
from audit.ledger import QUEUED, Queued, append_row, now
from audit.records import load_records, proposal_mask, remember_shown
from audit.settings import AuditError
from pipeline.build.annotate import RasterPixels
from pipeline.dataset.records import TileRecord
from pipeline.files.atomic import atomic_path
from pipeline.files.layout import audit_dir
from pipeline.raster.ingest import BandRule, IngestError
from pipeline.raster.outputs import palette
from taxonomy.loader import Taxonomy

IMPORT_CHUNK = 500
MODEL_VERSION = "ovrsis-build"


@dataclass
class PushSummary:
    project_id: int
    sampled: int
    created: int
    already_there: int
    task_ids: list[int] = field(default_factory=list)


def label_config(taxonomy: Taxonomy, smart: bool = False) -> str:
    """Tile, discard choices over the task's own proposals, conflict note, brush labels for every
    category; with `smart`, keypoint and rectangle tools over the same labels for the SAM backend
    (`smartOnly`: shown only while Auto-Annotation is on; a pull reads brush regions only). Only a
    project with the backend connected gets them: without it they would be dead buttons."""
    colours = palette(len(taxonomy))
    labels = "\n".join(
        f'      <Label value={quoteattr(c.name)} background="#{"".join(f"{v:02x}" for v in colours[c.index])}"/>'
        for c in taxonomy.categories
    )
    smart_tools = _smart_tools(labels) if smart else ""
    return f"""<View>
  <Header value="Tile $key — domain $domain — queue $queue"/>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <Header value="Proposed categories: $proposed"/>
  <Text name="conflicts" value="$conflicts_note"/>
  <Header value="Discard categories not in the tile (their pixels become 'not labelled', ignored in training):"/>
  <Choices name="discard" toName="image" choice="multiple" value="$proposed_options" showInline="true"/>
  <Header value="Masks: keep a region to accept it, repaint to correct it, relabel it to correct its category."/>
  <BrushLabels name="mask" toName="image">
{labels}
  </BrushLabels>
{smart_tools}  <Header value="A corrected region: how was it corrected? (select the region, then choose)"/>
  <Choices name="correction" toName="image" perRegion="true" choice="single" showInline="true">
    <Choice value="boundary" hint="outline repainted"/>
    <Choice value="merge" hint="merged into another category"/>
    <Choice value="filtering" hint="instance or region removed"/>
  </Choices>
</View>"""


_SMART_TOOLS_HEADER = (
    "Smart tools (Auto-Annotation on): click (Alt-click: background) or drag a box with a label; "
    "SAM returns its brush mask."
)


def _smart_tools(labels: str) -> str:
    return f"""  <Header value="{_SMART_TOOLS_HEADER}"/>
  <KeyPointLabels name="click" toName="image" smart="true" smartOnly="true">
{labels}
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true" smartOnly="true">
{labels}
  </RectangleLabels>
"""


def stratified_sample(
    records: Sequence[TileRecord], n: int, seed: int, strata: str | None = "domain"
) -> list[TileRecord]:
    """`n` tiles, allocated to strata in proportion to their size (largest remainder), drawn with
    `random.Random(seed)` from each stratum's keys in sorted order: the same inputs and seed give
    the same sample on any machine."""
    if n >= len(records):
        return sorted(records, key=lambda r: r.key)
    groups: dict[str, list[TileRecord]] = defaultdict(list)
    for record in records:
        groups[_stratum(record, strata)].append(record)
    exact = {g: n * len(members) / len(records) for g, members in groups.items()}
    quota = {g: int(v) for g, v in exact.items()}
    for group in sorted(groups, key=lambda g: (-(exact[g] - quota[g]), g))[: n - sum(quota.values())]:
        quota[group] += 1
    rng = random.Random(seed)
    chosen = []
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda r: r.key)
        chosen.extend(rng.sample(members, quota[group]))
    return sorted(chosen, key=lambda r: r.key)


def uncertain_sample(records: Sequence[TileRecord], n: int) -> list[TileRecord]:
    """The `n` least certain tiles: overlap conflicts first, then the lowest detector x mask score."""

    def certainty(record: TileRecord) -> tuple:
        kept = [i for i in record.instances if not i.dropped]
        weakest = min((i.detector_score * (i.mask_score or 0.0) for i in kept), default=1.0)
        return (-len(record.conflicts), weakest, record.key)

    return sorted(sorted(records, key=certainty)[:n], key=lambda r: r.key)


def push(
    client: AuditClient,
    out_dir: Path,
    taxonomy: Taxonomy,
    records: Sequence[TileRecord],
    title: str,
    served_root: Path,
    queue: str = "sample",
    shown: dict[str, str] | None = None,
    chunk: int = IMPORT_CHUNK,
    second_opinions: Mapping[str, tuple[str, np.ndarray]] | None = None,
) -> PushSummary:
    """Create (or reuse) the project `title` and import the records not already in it.

    All-or-nothing: every check (the served root, each record's proposal) runs before anything is
    created on the server. A task's identity is its tile key (its key and the proposal it shows in
    the "stale" queue), so pushing twice creates nothing new. `second_opinions` (key -> (label, mask)):
    another model's mask shown beside the build's proposal as a second prediction, named by its label
    (an audit round's Pi-Seg where it disagrees with the proposal)."""
    if shown is None:  # (push_queues prepares every queue's tiles at once, before any push)
        shown = prepare_tiles(out_dir, records, served_root)
    project_id = ensure_project(client, title, taxonomy, out_dir, (audit_dir(out_dir) / "images").resolve())
    existing = existing_tasks(client, project_id)
    new = [r for r in records if _identity(r.key, shown[r.key], queue) not in existing]
    task_ids: list[int] = []
    for start in range(0, len(new), chunk):
        part = new[start : start + chunk]
        payload = [
            task_payload(r, out_dir, served_root, taxonomy, queue, shown[r.key], (second_opinions or {}).get(r.key))
            for r in part
        ]
        response = client.call(
            "importing tasks",
            lambda payload=payload: client.sdk.projects.import_tasks(
                id=project_id, request=payload, return_task_ids=True
            ),
        )
        task_ids.extend(response.task_ids or [])
        for record in part:
            queued = Queued(
                key=record.key, queue=queue, project_id=project_id, proposal_digest=shown[record.key], pushed_at=now()
            )
            append_row(out_dir / QUEUED, queued.model_dump())
    return PushSummary(project_id, len(records), len(new), len(records) - len(new), task_ids)


def prepare_tiles(out_dir: Path, records: Sequence[TileRecord], served_root: Path) -> dict[str, str]:
    """Everything a push needs from disk, before anything is created on the server: each tile's
    image (`audit/images/KEY.jpg`, read from its raster) under the served root, and the proposal it
    will show (kept by digest). Returns key -> proposal digest; any failure is an AuditError naming the tile."""
    images = (audit_dir(out_dir) / "images").resolve()
    _served_path(images, served_root)
    pixels = TileImages()
    shown = {}
    for record in records:
        try:
            image_path = images / f"{record.key}.jpg"
            if not image_path.is_file():
                with atomic_path(image_path) as temporary:
                    Image.fromarray(pixels(record)).save(temporary, format="JPEG", quality=95)
            shown[record.key] = remember_shown(out_dir, proposal_mask(out_dir, record))
        except (IngestError, OSError, ValueError) as error:
            raise AuditError(f"tile {record.key}: cannot prepare its task ({error}); nothing was pushed") from None
    return shown


def ensure_project(client: AuditClient, title: str, taxonomy: Taxonomy, out_dir: Path, images: Path) -> int:
    """This output folder's project titled `title`, created if need be (marked as the folder's, see
    audit/folders.py), with local-files storage over `images` (connected now if an earlier,
    interrupted push created the project without it). Another folder's project of that title is refused."""
    project_id = folder_project(client, title, out_dir)
    if project_id is None:
        project_id = client.call(
            "creating the project",
            lambda: client.sdk.projects.create(
                title=title,
                label_config=label_config(taxonomy),
                description=project_description(out_dir, f"{taxonomy.name} {taxonomy.version}"),
            ),
        ).id
    storages = client.call("listing storages", lambda: client.sdk.import_storage.local.list(project=project_id))
    if not any(Path(s.path or "").resolve() == images for s in storages):
        images.mkdir(parents=True, exist_ok=True)
        client.call(
            "connecting local-files storage",
            lambda: client.sdk.import_storage.local.create(
                project=project_id, path=str(images), title="tiles", use_blob_urls=False
            ),
        )
    return project_id


BACKEND_USER = "ovrsis"  # the HTTP Basic user Label Studio sends the ML backend (which checks the password only)


def connect_backend(client: AuditClient, project_id: int, url: str, taxonomy: Taxonomy, secret: str) -> int:
    """Connect the ML backend at `url` to the project (interactive, so its smart tools work), once,
    and give the project's labelling config the smart tools (labels unchanged). Returns the
    ML backend's id. Label Studio authenticates to the backend with HTTP Basic auth, `secret` (the
    backend's `--secret`) as the password; a connection that is already there gets it again, since
    Label Studio never shows the password it holds and a restarted backend may have a new one.
    Label Studio checks /health and /setup when connecting: a backend that is down, or a wrong
    secret, is reported here, after the tasks were pushed (they do not need it)."""
    project = client.call("reading the project", lambda: client.sdk.projects.get(id=project_id))
    if 'smart="true"' not in (project.label_config or ""):
        client.call(
            "adding the smart tools to the labelling config",
            lambda: client.sdk.projects.update(id=project_id, label_config=label_config(taxonomy, smart=True)),
        )
    url = url.rstrip("/")
    connection = dict(
        project=project_id,
        url=url,
        is_interactive=True,
        auth_method="BASIC_AUTH",
        basic_auth_user=BACKEND_USER,
        basic_auth_pass=secret,
    )
    for backend in client.call("listing ML backends", lambda: client.sdk.ml.list(project=project_id)):
        if (backend.url or "").rstrip("/") == url:
            client.call(
                "updating the ML backend's connection",
                lambda backend=backend: client.sdk.ml.update(id=backend.id, **connection),
            )
            return backend.id
    created = client.call(
        "connecting the ML backend",
        lambda: client.sdk.ml.create(title="ovrsis SAM + proposals", **connection),
    )
    return created.id


def existing_tasks(client: AuditClient, project_id: int) -> set[tuple]:
    """The identities of the project's tasks (see `_identity`). A task whose data names no tile as a
    push writes it (edited by hand: a key or digest that is no string) is no record's task: skipped."""
    tasks = client.call(
        "listing tasks", lambda: list(client.sdk.tasks.list(project=project_id, page_size=1000, fields="all"))
    )
    return {
        _identity(t.data["key"], t.data.get("proposal_digest"), t.data.get("queue"))
        for t in tasks
        if isinstance(t.data, dict)
        and isinstance(t.data.get("key"), str)
        and isinstance(t.data.get("proposal_digest"), str | None)
    }


def _identity(key: str, digest: str | None, queue: str | None) -> tuple:
    """A tile is queued once per project; in the stale queue, once per proposal it shows."""
    return (key, digest) if queue == "stale" else (key,)


class TileImages:
    """Re-reads tile pixels with the band rule each record was built with."""

    def __init__(self) -> None:
        self._sources: dict[BandRule, RasterPixels] = {}

    def __call__(self, record: TileRecord) -> np.ndarray:
        source = record.source
        rule = BandRule(bands=tuple(source.band_mapping), stretch="none" if source.stretch == "none" else "percentile")
        return self._sources.setdefault(rule, RasterPixels(rule))(record)[0]


def task_payload(
    record: TileRecord,
    out_dir: Path,
    served_root: Path,
    taxonomy: Taxonomy,
    queue: str,
    digest: str,
    second_opinion: tuple[str, np.ndarray] | None = None,
) -> dict:
    """One task: the tile's image (written by `prepare_tiles`) and one brush region per class in its
    proposal; with `second_opinion` (label, mask), that mask as a second prediction named by the label,
    its regions `m{category index}` (a reviewer who starts from it paints regions a pull reads as new)."""
    image_path = (audit_dir(out_dir) / "images" / f"{record.key}.jpg").resolve()
    mask = proposal_mask(out_dir, record)
    proposed = [c for c in proposed_categories(mask, taxonomy) if c.propose]
    regions = brush_regions(mask, taxonomy)
    scores = [i.detector_score * (i.mask_score or 0.0) for i in record.instances if not i.dropped]
    conflicts = "; ".join(
        f"{c.winner_category} over {c.loser_category} ({c.pixels} px, {c.rule})" for c in record.conflicts
    )
    predictions = [
        {
            "model_version": MODEL_VERSION,
            "score": prediction_score(float(np.mean(scores))) if scores else 0.0,
            "result": regions,
        }
    ]
    if second_opinion is not None:
        label, other = second_opinion
        predictions.append({"model_version": label, "score": 0.0, "result": brush_regions(other, taxonomy, "m")})
    return {
        "data": {
            "image": "/data/local-files/?d=" + quote(_served_path(image_path, served_root), safe="/"),
            "key": record.key,
            "domain": record.domain.name if record.domain else "unknown",
            "queue": queue,
            "proposal_digest": digest,
            "proposed": ", ".join(c.name for c in proposed) or "(none)",
            "proposed_options": [{"value": c.name} for c in proposed],
            "conflicts_note": f"⚠ overlaps resolved by the merge: {conflicts}" if conflicts else "no overlap conflicts",
        },
        "predictions": predictions,
    }


def prediction_score(score: float) -> float:
    """A prediction's score as Label Studio takes it: in [0, 1] ("Score must be between 0.00 and 1.00",
    else the prediction is refused). Detector x mask scores and SAM's predicted IoU are regression
    outputs that can fall below 0 or above 1 (or be NaN from a degenerate prompt): clamped, NaN as 0,
    rounded to 4 places."""
    return 0.0 if math.isnan(score) else round(min(1.0, max(0.0, score)), 4)


def brush_regions(mask: np.ndarray, taxonomy: Taxonomy, prefix: str = "r") -> list[dict]:
    """One editable brush region per class in a semantic mask, id `r{category index}` (so a pull knows
    which proposal a reviewed region came from); the background class too: editable, not judged."""
    return [brush_region(mask == c.index, c.name, f"{prefix}{c.index}") for c in proposed_categories(mask, taxonomy)]


def brush_region(pixels: np.ndarray, label: str, region_id: str) -> dict:
    """A Label Studio brush region (label_studio_sdk's RLE) over the (H, W) bool `pixels`."""
    return {
        "id": region_id,
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": int(pixels.shape[1]),
        "original_height": int(pixels.shape[0]),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle((pixels * 255).astype(np.uint8)), "brushlabels": [label]},
    }


def _served_path(path: Path, served_root: Path) -> str:
    """The path relative to the local-files document root; anything outside it is refused."""
    try:
        return str(path.resolve().relative_to(served_root.resolve()))
    except ValueError:
        raise AuditError(
            f"{path} is outside the served root {served_root}: Label Studio would not serve it "
            "(start the server with --root at or above the build output folder)"
        ) from None


def _stratum(record: TileRecord, strata: str | None) -> str:
    if strata in (None, "", "none"):
        return "all"
    if strata == "domain":
        return record.domain.name if record.domain else "unknown"
    raise AuditError(f"unknown strata {strata!r} (domain or none)")


def load_live_records(out_dir: Path) -> list[TileRecord]:
    return [r for r in load_records(out_dir) if not r.quarantine]
