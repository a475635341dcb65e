"""`ovrsis audit backend`: a Label Studio ML backend for the review queues.

It speaks Label Studio's documented ML-backend protocol (GET /health, POST /setup, /predict,
/webhook) on FastAPI + uvicorn, not on the `label-studio-ml` SDK: its PyPI release (1.0.9) pins
Flask 1.1.2, Jinja2 3.0.3 and Werkzeug 2.0.2, which would downgrade what Prefect needs in the
project venv, and its maintained 2.x lives only in git. FastAPI and uvicorn come with Prefect.

Two services:
- interactive SAM: a reviewer's smart keypoint clicks (object / background) or box, sent by
  Label Studio as `params.context.result`, become one brush region of the chosen label. The image
  embedding is computed once per image and cached on disk (audit/embeddings.py): every later click
  runs the mask decoder only.
- pre-annotations for tasks without them: the build's proposal for the task's tile (`data.key`),
  else a Pi-Seg checkpoint's prediction, else an empty result.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from audit.embeddings import EmbeddingCache
from audit.interactive import InteractiveSam, Prompt, load_interactive, torch_threads
from audit.queue import MODEL_VERSION, brush_region, brush_regions
from audit.settings import AuditError
from taxonomy.loader import Taxonomy

log = logging.getLogger("ovrsis.audit.backend")
SMART_TYPES = ("keypointlabels", "rectanglelabels")


@dataclass
class BackendConfig:
    root: Path  # Label Studio's local-files document root: `/data/local-files/?d=REL` is read from ROOT/REL
    records: Path | None = None  # build output: the tiles' proposals; embeddings cached under it
    models: str = "default"  # models configuration whose SAM segments the clicks (`tiny` in tests)
    piseg: Path | None = None  # Pi-Seg checkpoint for pre-annotations of tiles without a proposal
    cache: Path | None = None  # embedding cache [RECORDS/audit/embeddings or ROOT/.ovrsis-embeddings]
    warm: bool = False  # embed every pushed tile image in the background, before the first click
    decode_threads: int | None = 1  # intra-op threads of the mask decoder (see audit.interactive.torch_threads)


class ReviewBackend:
    """The protocol's work, without HTTP (so the benchmark and tests call it directly)."""

    def __init__(self, config: BackendConfig, taxonomy: Taxonomy, sam: InteractiveSam | None = None) -> None:
        self.config = config
        self.taxonomy = taxonomy
        self._sam = sam
        self._embeddings: EmbeddingCache | None = None
        self._records: dict | None = None
        self._piseg = None
        self._model_lock = threading.Lock()  # one model call at a time: two on 2 cores only thrash
        self._label_studio: tuple[str, str] | None = None  # (hostname, access token) from /setup
        self._warming: threading.Thread | None = None

    # --- models, loaded on first use so /health answers at once ---
    @property
    def sam(self) -> InteractiveSam:
        if self._sam is None:
            self._sam = load_interactive(self.config.models)
        return self._sam

    @property
    def embeddings(self) -> EmbeddingCache:
        if self._embeddings is None:
            folder = self.config.cache or (
                self.config.records / "audit" / "embeddings"
                if self.config.records
                else self.config.root / ".ovrsis-embeddings"
            )
            self._embeddings = EmbeddingCache(folder, self.sam.model_key)
        return self._embeddings

    def embedding(self, image: np.ndarray) -> np.ndarray:
        return self.embeddings.get(image, self._embed)

    def _embed(self, image: np.ndarray) -> np.ndarray:
        with self._model_lock:
            return self.sam.embed(image)

    # --- protocol ---
    def setup(self, request: dict) -> dict:
        if request.get("hostname") and request.get("access_token"):
            self._label_studio = (str(request["hostname"]).rstrip("/"), str(request["access_token"]))
        if self.config.warm:
            self.warm_in_background()
        return {"model_version": MODEL_VERSION}

    def predict(self, request: dict) -> dict:
        """Interactive (a context with smart-tool regions) for one task, else pre-annotations per task."""
        tasks = request.get("tasks") or []
        context = (request.get("params") or {}).get("context") or {}
        smart = [r for r in context.get("result") or [] if r.get("type") in SMART_TYPES]
        if smart:
            return {"results": [self.click(tasks[0], smart)]}
        return {"results": [self.preannotate(task) for task in tasks]}

    def click(self, task: dict, smart: list[dict]) -> dict:
        """The brush region SAM gives for the smart tool's points (all of them) and box (the last one)."""
        image = self.image(task)
        height, width = image.shape[:2]
        prompt, label = Prompt(), None
        for region in smart:
            value, kind = region["value"], region["type"]
            label = (value.get(kind) or [label])[0]
            x, y = value["x"] * width / 100, value["y"] * height / 100
            if kind == "keypointlabels":
                prompt.points.append((x, y))
                prompt.labels.append(0 if region.get("is_positive") is False else 1)
            else:
                prompt.box = (x, y, x + value["width"] * width / 100, y + value["height"] * height / 100)
        if label is None or label not in {c.name for c in self.taxonomy.categories}:
            raise AuditError(f"the smart tool's label {label!r} is not a category of {self.taxonomy.name}")
        embedding = self.embedding(image)
        with self._model_lock, torch_threads(self.config.decode_threads):
            mask, score = self.sam.decode(embedding, (height, width), prompt)
        region = brush_region(mask, label, f"sam-{uuid.uuid4().hex[:10]}")
        return {
            "result": [dict(region, readonly=False)],
            "score": round(score, 4),
            "model_version": f"sam:{self.sam.model_key}",
        }

    def preannotate(self, task: dict) -> dict:
        """The build's proposal for the task's tile, else Pi-Seg's prediction, else nothing."""
        record = self.records.get((task.get("data") or {}).get("key"))
        if record is not None:
            from audit.records import proposal_mask

            return {
                "result": brush_regions(proposal_mask(self.config.records, record), self.taxonomy),
                "model_version": MODEL_VERSION,
            }
        if self.config.piseg is not None:
            names = [c.name for c in self.taxonomy.categories]
            image = self.image(task)
            with self._model_lock:
                predicted = self.piseg.predict(image, names)
            mask = np.full(predicted.shape, 255, np.uint8)
            known = predicted < len(names)
            mask[known] = np.asarray([c.index for c in self.taxonomy.categories], np.uint8)[predicted[known]]
            return {"result": brush_regions(mask, self.taxonomy), "model_version": f"piseg:{self.config.piseg.name}"}
        return {"result": [], "model_version": MODEL_VERSION}

    def webhook(self, event: dict) -> dict:
        """A submitted review means the reviewer moved on: nothing to train; the ledger is pulled by
        `ovrsis audit pull`."""
        log.info("webhook %s", event.get("action"))
        return {"status": "ok"}

    # --- data ---
    @property
    def records(self) -> dict:
        if self._records is None:
            from audit.queue import load_live_records

            records_folder = self.config.records
            has_records = records_folder is not None and (records_folder / "records.jsonl").is_file()
            self._records = {r.key: r for r in load_live_records(records_folder)} if has_records else {}
        return self._records

    @property
    def piseg(self):
        if self._piseg is None:
            from piseg.inference.predict import Predictor  # the one audit -> piseg edge, imported on use

            self._piseg = Predictor(self.config.piseg)
        return self._piseg

    def image(self, task: dict) -> np.ndarray:
        """The task's image as (H, W, 3) uint8: local-files paths from the served root, anything else over HTTP."""
        url = str((task.get("data") or {}).get("image") or "")
        parsed = urllib.parse.urlparse(url)
        if parsed.path.startswith("/data/local-files/"):
            relative = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            path = (self.config.root / relative).resolve()
            if not path.is_relative_to(self.config.root.resolve()):
                raise AuditError(f"{relative}: outside the served root")
            return np.array(Image.open(path).convert("RGB"))
        if not parsed.scheme:
            if self._label_studio is None:
                raise AuditError(f"cannot fetch {url!r}: Label Studio has not called /setup yet")
            url = self._label_studio[0] + url
        request = urllib.request.Request(url)
        if self._label_studio and url.startswith(self._label_studio[0]):
            request.add_header("Authorization", f"Token {self._label_studio[1]}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return np.array(Image.open(BytesIO(response.read())).convert("RGB"))

    def warm_in_background(self) -> threading.Thread:
        """Embed every pushed tile image not yet cached (RECORDS/audit/images), one at a time, in a daemon thread."""
        if self._warming is not None and self._warming.is_alive():
            return self._warming
        folder = (self.config.records or self.config.root) / "audit" / "images"
        thread = self._warming = threading.Thread(
            target=self._warm, args=(sorted(folder.glob("*.jpg")),), daemon=True, name="warm-embeddings"
        )
        thread.start()
        return thread

    def _warm(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                self.embedding(np.asarray(Image.open(path).convert("RGB")))
            except (OSError, ValueError) as error:
                log.warning("cannot embed %s: %s", path, error)


def create_app(backend: ReviewBackend):
    """The HTTP face of `backend`, as Label Studio calls it."""
    app = FastAPI(title="ovrsis review backend")

    @app.get("/")
    @app.get("/health")
    def health() -> dict:
        return {"status": "UP", "model_class": "OvrsisReviewBackend"}

    @app.post("/setup")
    async def setup(request: Request) -> dict:
        return backend.setup(await _json(request))

    @app.post("/predict")
    def predict(payload: dict) -> JSONResponse:  # a plain def: FastAPI runs it in a worker thread
        try:
            return JSONResponse(backend.predict(payload))
        except (AuditError, OSError, ValueError, KeyError, IndexError) as error:
            log.warning("predict failed: %s", error)
            return JSONResponse({"error": f"{type(error).__name__}: {error}"}, status_code=400)

    @app.post("/webhook")
    async def webhook(request: Request) -> dict:
        return backend.webhook(await _json(request))

    @app.post("/train")
    def train() -> dict:  # older Label Studio versions call /train instead of the webhook
        return {"status": "ok", "job": None}

    return app


async def _json(request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def serve(backend: ReviewBackend, host: str = "127.0.0.1", port: int = 9090) -> None:
    import uvicorn

    uvicorn.run(create_app(backend), host=host, port=port, log_level="warning")
