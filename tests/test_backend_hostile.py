"""The review ML backend facing hostile input: whoever can reach its port, and whoever can write a
task's image URL (anyone who can edit a Label Studio project).

It must read no file outside the served root and fetch from no server but Label Studio's (no
`file:` URL, no loopback port of another service, no prefix look-alike, no redirect away); send the
Label Studio token nowhere else; stop reading an image past its byte limit; answer every endpoint but
the health check only with the shared secret; and tell the client nothing about this machine (which
files exist, which ports are open). The tiny HTTP servers here run on free loopback ports and record
every request they get; a smart click with an unknown label ("unicorn") shows that an image was read
(the label is checked after the image) without loading SAM.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from audit.backend import BackendConfig, ReviewBackend, create_app
from taxonomy import load_taxonomy

SECRET = "hostile-test-secret-0123456789"
TOKEN = "label-studio-admin-token"
LIMIT = 1 << 20  # the backend's image byte limit in these tests
BIG = 96 << 20  # a body far over it
NOT_AVAILABLE = {"error": "image not available"}


def png(size: int = 16) -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Site:
    """A tiny HTTP server on a free loopback port; `seen` holds (path, Authorization header) per request."""

    routes: dict[str, Route]
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def site(routes: dict[str, Route]) -> Iterator[Site]:
    record = Site(routes)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            record.seen.append((self.path, self.headers.get("Authorization")))
            route = record.routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
            else:
                route(self)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


def serve_png(handler: BaseHTTPRequestHandler) -> None:
    body = png()
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect_to(url: str) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", url)
        handler.end_headers()

    return route


def stream(total: int, declared: bool, sent: list[int]) -> Route:
    """A body of `total` bytes written 64 KiB at a time until the client hangs up; `sent` gets the bytes
    written (with `declared`, Content-Length says `total` first; without, the body ends at the close)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        if declared:
            handler.send_header("Content-Length", str(total))
        handler.end_headers()
        chunk, written = bytes(64 << 10), 0
        try:
            while written < total:
                handler.wfile.write(chunk)
                written += len(chunk)
        except OSError:
            pass
        sent.append(written)

    return route


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """(served root with audit/images/tile.png, a readable image outside it)."""
    root = tmp_path / "root"
    (root / "audit" / "images").mkdir(parents=True)
    (root / "audit" / "images" / "tile.png").write_bytes(png())
    outside = tmp_path / "outside" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes(png())
    return root, outside


@pytest.fixture
def backend(folders) -> ReviewBackend:
    return ReviewBackend(BackendConfig(root=folders[0], max_image_bytes=LIMIT), load_taxonomy("ovrsis95k"))


@pytest.fixture
def http(backend) -> TestClient:
    """The backend's app, called with the secret as Label Studio sends it (HTTP Basic auth)."""
    client = TestClient(create_app(backend, SECRET))
    client.auth = ("ovrsis", SECRET)
    return client


def click_payload(image: str) -> dict:
    click = {"type": "keypointlabels", "value": {"x": 50, "y": 50, "keypointlabels": ["unicorn"]}}
    return {"tasks": [{"id": 7, "data": {"image": image}}], "params": {"context": {"result": [click]}}}


def ask(http: TestClient, image: str):
    return http.post("/predict", json=click_payload(image))


def read(response) -> bool:
    """Whether the backend read the image: it then refuses the unknown label, not the image."""
    return response.status_code == 400 and "unicorn" in response.json()["error"]


def setup(http: TestClient, label_studio: str):
    return http.post("/setup", json={"project": "1.1", "hostname": label_studio, "access_token": TOKEN})


def assert_refused(response, *hidden: object) -> None:
    """The one generic answer, naming none of `hidden` (paths, ports) nor an OS error."""
    assert response.status_code == 400 and response.json() == NOT_AVAILABLE, response.text
    for text in (*map(str, hidden), "No such file", "Errno", "refused", "Traceback"):
        assert text not in response.text


# --- the secret ---


def test_health_is_open_and_bare_everything_else_needs_the_secret(backend):
    anyone = TestClient(create_app(backend, SECRET))
    for path in ("/", "/health"):
        assert anyone.get(path).json() == {"status": "UP"}
    calls = [
        ("post", "/setup", {"hostname": "http://127.0.0.1:1", "access_token": TOKEN}),
        ("post", "/predict", click_payload("/data/local-files/?d=audit/images/tile.png")),
        ("post", "/webhook", {"action": "ANNOTATION_CREATED"}),
        ("post", "/train", {}),
        ("get", "/docs", None),
        ("get", "/openapi.json", None),
        ("get", "/no-such-path", None),
    ]
    wrong = [
        None,
        ("ovrsis", "wrong-secret-0123456789"),
        ("ovrsis", SECRET[:-1]),
        (SECRET, "x"),  # the secret as the user name is not the password
    ]
    for auth in wrong:
        anyone.auth = auth
        for method, path, body in calls:
            response = getattr(anyone, method)(path, **({"json": body} if body is not None else {}))
            assert response.status_code == 401, (auth, path, response.text)
            assert response.json() == {"error": "unauthorized"}
    anyone.auth = None
    for header in (f"Bearer {SECRET}x", "Basic !!not-base64!!", f"Token {SECRET}", SECRET):
        assert anyone.post("/webhook", json={}, headers={"Authorization": header}).status_code == 401, header
    assert anyone.post("/webhook", json={}, headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
    anyone.auth = ("any-user", SECRET)
    assert anyone.post("/webhook", json={}).json() == {"status": "ok"}
    assert anyone.get("/docs").status_code == 404  # no API pages, even with the secret


def test_setup_without_the_secret_changes_nothing(http, backend):
    """An unauthorized /setup cannot name a server for the backend to send Label Studio's token to."""
    with site({"/img.png": serve_png}) as trap:
        stranger = TestClient(create_app(backend, SECRET))
        assert setup(stranger, trap.url).status_code == 401
        assert_refused(ask(http, "/img.png"))
        assert trap.seen == []


# --- where images may come from ---


@pytest.mark.parametrize(
    "url",
    [
        "file://{outside}",
        "file:///etc/passwd",
        "file:///etc/shadow",
        "ftp://127.0.0.1/{outside}",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==",
        "{outside}",
        "//127.0.0.1/{outside}",
    ],
)
def test_other_schemes_are_refused(http, folders, url):
    url = url.format(outside=folders[1])
    assert_refused(ask(http, url), folders[1], folders[0])


@pytest.mark.parametrize(
    "relative",
    [
        "../outside/secret.png",
        "audit/../../outside/secret.png",
        "{outside}",  # absolute
        "audit//images/tile.png",
        "./audit/images/tile.png",
        "audit\\..\\..\\outside\\secret.png",
        "link.png",  # a symbolic link in the root to a file outside it
        "audit/images/missing.png",
        "audit/images",  # a folder
        "%2e%2e/outside/secret.png",
        "",
    ],
)
def test_local_files_stay_in_the_served_root(http, folders, relative):
    root, outside = folders
    (root / "link.png").symlink_to(outside)
    odd = "odd&name #1+%.png"  # percent-encoded as `audit push` writes it: names are not refused, paths out are
    (root / "audit" / "images" / odd).write_bytes(png())
    for served in ("audit/images/tile.png", quote(f"audit/images/{odd}", safe="/")):
        assert read(ask(http, "/data/local-files/?d=" + served))
    assert_refused(ask(http, "/data/local-files/?d=" + relative.format(outside=outside)), root, outside)


def test_an_existing_file_and_a_missing_one_look_the_same(http, folders):
    root, outside = folders
    answers = {
        ask(http, f"/data/local-files/?d=../outside/{name}").text for name in ("secret.png", "missing.png", "")
    } | {ask(http, f"file://{outside.parent}/{name}").text for name in ("secret.png", "missing.png")}
    assert len(answers) == 1 and answers.pop() == '{"error":"image not available"}'


def test_only_the_label_studio_server_and_only_it_gets_the_token(http):
    routes = {"/data/upload/1/tile.png": serve_png, "/img.png": serve_png}
    with site(routes) as label_studio, site(routes) as other:
        assert_refused(ask(http, "/data/upload/1/tile.png"))  # no /setup yet: no server to ask
        assert setup(http, label_studio.url).json()["model_version"]
        assert read(ask(http, "/data/upload/1/tile.png"))
        assert read(ask(http, label_studio.url + "/img.png"))
        assert label_studio.seen == [("/data/upload/1/tile.png", f"Token {TOKEN}"), ("/img.png", f"Token {TOKEN}")]
        closed = closed_port()
        refused = [
            ask(http, url)
            for url in (
                f"{other.url}/img.png",  # another loopback port with a server on it
                f"http://127.0.0.1:{closed}/img.png",  # a loopback port with nothing on it
                f"http://localhost:{label_studio.port}/img.png",  # same server, other host name: not equal
                f"https://127.0.0.1:{label_studio.port}/img.png",  # other scheme
                f"http://127.0.0.1:{label_studio.port}.evil/img.png",  # the Label Studio URL as a prefix
                f"http://127.0.0.1:{label_studio.port}1/img.png",
                f"http://127.0.0.1:{label_studio.port}@127.0.0.1:{other.port}/img.png",  # prefix, then user info
                f"http://user:pw@127.0.0.1:{label_studio.port}/img.png",
            )
        ]
        assert other.seen == [] and len(label_studio.seen) == 2
        for response in refused:
            assert_refused(response, other.port, closed)
        assert len({r.text for r in refused}) == 1  # an open port, a closed one and a refused host answer alike


def test_a_redirect_away_from_label_studio_is_not_followed(http):
    with site({"/img.png": serve_png}) as other:
        hops = {"/away.png": redirect_to(f"{other.url}/img.png"), "/here.png": redirect_to("/img.png")}
        with site(hops | {"/img.png": serve_png}) as label_studio:
            setup(http, label_studio.url)
            away, here = ask(http, "/away.png"), ask(http, "/here.png")
            assert other.seen == []
            assert [path for path, _ in label_studio.seen] == ["/away.png", "/here.png"]
            assert_refused(away, other.port)
            assert_refused(here)  # no redirect at all, not even on the server


# --- size ---


@contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """The peak bytes Python allocated inside the block (every thread), in the list it yields."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def wait_for(values: list[int], timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while not values and time.monotonic() < deadline:
        time.sleep(0.05)
    return values[0]


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
def test_a_download_stops_at_the_byte_limit(http, declared):
    sent: list[int] = []
    with site({"/big.png": stream(BIG, declared, sent)}) as label_studio:
        setup(http, label_studio.url)
        with peak_allocated() as peak:
            response = ask(http, "/big.png")
        assert wait_for(sent) < BIG // 2  # the backend hung up: the rest was never sent
    assert peak[0] < 16 * LIMIT, peak
    assert_refused(response)


def test_a_local_file_over_the_byte_limit_is_not_read(http, folders):
    root, _ = folders
    with (root / "huge.png").open("wb") as file:  # sparse: BIG bytes on paper, none on disk
        file.truncate(BIG)
    with peak_allocated() as peak:
        response = ask(http, "/data/local-files/?d=huge.png")
    assert peak[0] < 16 * LIMIT, peak
    assert_refused(response, root)


# --- the command ---


def test_the_backend_command_never_listens_without_a_secret(tmp_path, monkeypatch):
    import audit.backend
    from audit.cli import app

    served: list[str] = []
    monkeypatch.setattr(audit.backend, "serve", lambda review, secret, **_: served.append(secret))
    monkeypatch.delenv("OVRSIS_BACKEND_SECRET", raising=False)
    command = ["backend", "--root", str(tmp_path), "--models", "default"]

    generated = CliRunner().invoke(app, command)
    assert generated.exit_code == 0, generated.output
    assert len(served[-1]) >= 16 and served[-1] in generated.output  # printed for whoever started it
    given = CliRunner().invoke(app, command, env={"OVRSIS_BACKEND_SECRET": SECRET})
    assert given.exit_code == 0 and served[-1] == SECRET and SECRET not in given.output
    short = CliRunner().invoke(app, [*command, "--secret", "short"])
    assert short.exit_code == 2 and "at least 16 characters" in short.output and len(served) == 2


def test_push_with_a_backend_needs_its_secret(tmp_path, monkeypatch):
    from audit.cli import app

    monkeypatch.delenv("OVRSIS_BACKEND_SECRET", raising=False)
    result = CliRunner().invoke(app, ["push", "--records", str(tmp_path), "--backend", "http://127.0.0.1:9090"])
    assert result.exit_code == 2 and "OVRSIS_BACKEND_SECRET" in result.output, result.output
