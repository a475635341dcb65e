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

Whoever can reach the port, and whoever can edit a task's data, is not trusted:
- every endpoint but the bare health check (`/`, `/health`: `{"status": "UP"}`, nothing more) needs
  the shared secret, as the password of HTTP Basic auth (how Label Studio's ML-backend connection
  authenticates: `auth_method` BASIC_AUTH) or as a bearer token; else 401. /setup hands the backend
  Label Studio's URL and an admin token, so it must not be open.
- a task's image is read from two places only: a local-files URL (`/data/local-files/?d=REL`) from
  the served root, REL confined to it; or a path on the Label Studio server that called /setup
  (same scheme, host and port), with its token, over a connection that follows no redirect and
  uses no proxy. Any other URL (file:, ftp:, data:, another host or port) is refused.
- at most `max_image_bytes` of an image are read, in chunks; past it the read stops.
- a refused or failed image reaches the client as "image not available"; the reason (a path, an
  OS error, a port) goes to the backend's log only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import http.client
import logging
import os
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from audit.embeddings import EmbeddingCache
from audit.interactive import InteractiveSam, Prompt, load_interactive, torch_threads
from audit.queue import MODEL_VERSION, brush_region, brush_regions, prediction_score
from audit.settings import AuditError
from ovrsis.errors import ImageRefused, TaskError
from pipeline.files.layout import audit_dir, records_file
from pipeline.files.safe_names import confined_name
from taxonomy.loader import Taxonomy
from taxonomy.masks import IGNORE_INDEX

log = logging.getLogger("ovrsis.audit.backend")
SMART_TYPES = ("keypointlabels", "rectanglelabels")
MIB = 1 << 20
DEFAULT_MAX_IMAGE_BYTES = 256 * MIB  # a 1024x1024 tile is a few MiB; a task may name a file of any size
MIN_SECRET_CHARS = 16  # Basic auth has no rate limit: a short secret could be guessed
LOCAL_FILES = "/data/local-files/"  # Label Studio's local-files view: `LOCAL_FILES?d=REL` is ROOT/REL
DEFAULT_PORTS = {"http": 80, "https": 443}  # the only schemes an image is fetched with
HEALTH_PATHS = frozenset({"/", "/health"})  # the only paths answered without the secret
FETCH_TIMEOUT_S = 60


class ImageNotAvailable(TaskError):
    """The one answer for every image that cannot be read, whatever the reason."""

    def __init__(self) -> None:
        super().__init__("image not available")


@dataclass
class BackendConfig:
    root: Path  # Label Studio's local-files document root: `/data/local-files/?d=REL` is read from ROOT/REL
    records: Path | None = None  # build output: the tiles' proposals; embeddings cached under it
    models: str = "default"  # models configuration whose SAM segments the clicks (`tiny` in tests)
    piseg: Path | None = None  # Pi-Seg checkpoint for pre-annotations of tiles without a proposal
    cache: Path | None = None  # embedding cache [RECORDS/audit/embeddings or ROOT/.ovrsis-embeddings]
    warm: bool = False  # embed every pushed tile image in the background, before the first click
    decode_threads: int | None = 1  # intra-op threads of the mask decoder (see audit.interactive.torch_threads)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # a task's image is refused past this many bytes


Origin = tuple[str, str, int]  # (scheme, host, port) of a URL


@dataclass(frozen=True)
class LabelStudioServer:
    """The Label Studio server that called /setup: the one server images are fetched from over HTTP,
    and the only one its token is sent to."""

    origin: Origin
    token: str

    @property
    def base(self) -> str:
        """`scheme://host:port`, as a request to this server starts (an IPv6 host in brackets)."""
        scheme, host, port = self.origin
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def origin(parts: urllib.parse.SplitResult) -> Origin | None:
    """(scheme, host, port) of an http(s) URL without a user or password in it, the port made explicit;
    None for any other URL, and for a port that is not a number in range (`host:8080.evil`, `host:80801`):
    two URLs are the same server only when all three are equal, never because one starts with the other."""
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


def read_limited(stream: BinaryIO, limit: int, declared: int | None = None) -> BytesIO:
    """All of `stream` when it holds at most `limit` bytes, read a chunk at a time; ImageRefused as soon as
    it holds more, or says it will (`declared`: Content-Length, a file's size), without reading the rest."""
    if declared is not None and declared > limit:
        raise ImageRefused(f"{declared} bytes, more than the limit of {limit}")
    buffer, size = BytesIO(), 0
    while chunk := stream.read(min(MIB, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            raise ImageRefused(f"more than the limit of {limit} bytes")
        buffer.write(chunk)
    buffer.seek(0)
    return buffer


def direct_opener() -> urllib.request.OpenerDirector:
    """An opener for http(s) only, through no proxy, following no redirect (a 3xx is an error): the
    request, and the token in it, go to the server the URL names and nowhere else."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


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
        self._label_studio: LabelStudioServer | None = None  # from /setup
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
                audit_dir(self.config.records) / "embeddings"
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
        """Label Studio's URL and token (task images on its server are fetched with them); a URL that is
        not plain http(s) is ignored, so no image is fetched over HTTP."""
        if request.get("hostname") and request.get("access_token"):
            server = origin(urllib.parse.urlsplit(str(request["hostname"])))
            if server is None:
                log.warning("/setup: Label Studio's hostname %r is not an http(s) URL", request["hostname"])
            else:
                self._label_studio = LabelStudioServer(server, str(request["access_token"]))
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
            raise TaskError(f"the smart tool's label {label!r} is not a category of {self.taxonomy.name}")
        embedding = self.embedding(image)
        with self._model_lock, torch_threads(self.config.decode_threads):
            mask, score = self.sam.decode(embedding, (height, width), prompt)
        region = brush_region(mask, label, f"sam-{uuid.uuid4().hex[:10]}")
        return {
            "result": [dict(region, readonly=False)],
            "score": prediction_score(score),
            "model_version": f"sam:{self.sam.model_key}",
        }

    def preannotate(self, task: dict) -> dict:
        """The build's proposal for the task's tile, else Pi-Seg's prediction, else nothing."""
        data = task.get("data")
        key = data.get("key") if isinstance(data, dict) else None
        record = self.records.get(key) if isinstance(key, str) else None  # a key from a task is data, never a path
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
            mask = np.full(predicted.shape, IGNORE_INDEX, np.uint8)
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
            has_records = records_folder is not None and records_file(records_folder).is_file()
            self._records = {r.key: r for r in load_live_records(records_folder)} if has_records else {}
        return self._records

    @property
    def piseg(self):
        if self._piseg is None:
            from piseg.inference.predict import Predictor  # the one audit -> piseg edge, imported on use

            self._piseg = Predictor(self.config.piseg)
        return self._piseg

    def image(self, task: dict) -> np.ndarray:
        """The task's image as (H, W, 3) uint8. Whatever stops it (a refused URL, a missing file, a
        closed port) is logged here and reaches the client only as ImageNotAvailable: the client
        learns nothing of which files exist or which ports are open."""
        url = str((task.get("data") or {}).get("image") or "")
        try:
            with Image.open(self.image_bytes(url)) as image:
                return np.array(image.convert("RGB"))
        except (OSError, ValueError, http.client.HTTPException, Image.DecompressionBombError) as error:
            log.warning("task %s: image %r not available: %s", task.get("id"), url, error)
            raise ImageNotAvailable from None

    def image_bytes(self, url: str) -> BytesIO:
        """The bytes a task's image URL names, from a local-files URL (`local_file`) or a path on the
        Label Studio server (`fetch`), given as a path or as a URL of that server; ImageRefused otherwise."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme or parts.netloc:
            server = self._label_studio
            if server is None or origin(parts) != server.origin:
                raise ImageRefused("not a URL of the Label Studio server that called /setup")
        if parts.path == LOCAL_FILES:
            return self.local_file(parts.query)
        return self.fetch(parts)

    def local_file(self, query: str) -> BytesIO:
        """ROOT/REL for a local-files query `d=REL`, as Label Studio serves it: each component of REL a
        plain file name (`confined_name`: no `..`, no absolute path), the path with its links resolved
        still inside the root, and a regular file (not a device or a pipe)."""
        (relative, *others) = urllib.parse.parse_qs(query).get("d") or [""]
        if others:
            raise ImageRefused("more than one local-files path")
        root = self.config.root.resolve()
        path = root.joinpath(*(confined_name(part, "local-files path component") for part in relative.split("/")))
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(root) or not resolved.is_file():
            raise ImageRefused(f"{resolved}: not a regular file inside the served root")
        with resolved.open("rb") as file:
            return read_limited(file, self.config.max_image_bytes, os.fstat(file.fileno()).st_size)

    def fetch(self, parts: urllib.parse.SplitResult) -> BytesIO:
        """An absolute path (and query) fetched from the Label Studio server with its token. The URL is
        rebuilt from the server's own origin, so nothing in the task's URL can point the request elsewhere."""
        server = self._label_studio
        if server is None:
            raise ImageRefused("Label Studio has not called /setup yet")
        if not parts.path.startswith("/"):
            raise ImageRefused("not a path on the Label Studio server")
        url = server.base + urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
        request = urllib.request.Request(url, headers={"Authorization": f"Token {server.token}"})
        with direct_opener().open(request, timeout=FETCH_TIMEOUT_S) as response:
            return read_limited(response, self.config.max_image_bytes, response.length)

    def warm_in_background(self) -> threading.Thread:
        """Embed every pushed tile image not yet cached (RECORDS/audit/images), one at a time, in a daemon thread."""
        if self._warming is not None and self._warming.is_alive():
            return self._warming
        folder = audit_dir(self.config.records or self.config.root) / "images"
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


def check_secret(secret: str) -> str:
    """`secret` when it is long enough to stand as the backend's only lock; AuditError otherwise."""
    if len(secret) < MIN_SECRET_CHARS:
        raise AuditError(f"the ML backend's secret must be at least {MIN_SECRET_CHARS} characters")
    return secret


def authorized(header: str | None, secret: str) -> bool:
    """Whether an Authorization header carries the secret: as the password of HTTP Basic auth (what Label
    Studio sends for an ML backend connected with auth_method BASIC_AUTH; any user name) or as a bearer
    token. Compared in constant time, so the answer's timing does not tell how much of a guess was right."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() == "bearer":
        given = value.strip()
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


def create_app(backend: ReviewBackend, secret: str) -> FastAPI:
    """The HTTP face of `backend`, as Label Studio calls it; every path but the health check needs `secret`
    (checked before a body is read). No OpenAPI pages: they would describe the backend to anyone."""
    check_secret(secret)
    app = FastAPI(title="ovrsis review backend", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_secret(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in HEALTH_PATHS or authorized(request.headers.get("authorization"), secret):
            return await call_next(request)
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": 'Basic realm="ovrsis"'}
        )

    @app.get("/")
    @app.get("/health")
    def health() -> dict:
        return {"status": "UP"}

    @app.post("/setup")
    async def setup(request: Request) -> dict:
        return backend.setup(await _json(request))

    @app.post("/predict")
    def predict(payload: dict) -> JSONResponse:  # a plain def: FastAPI runs it in a worker thread
        try:
            return JSONResponse(backend.predict(payload))
        except TaskError as error:
            log.warning("predict refused: %s", error)
            return JSONResponse({"error": str(error)}, status_code=400)
        except (AuditError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
            log.warning("predict failed: %s: %s", type(error).__name__, error)
            return JSONResponse(
                {"error": "cannot answer this request (the ML backend's log says why)"}, status_code=400
            )

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


def serve(backend: ReviewBackend, secret: str, host: str = "127.0.0.1", port: int = 9090) -> None:
    import uvicorn

    uvicorn.run(create_app(backend, secret), host=host, port=port, log_level="warning")
