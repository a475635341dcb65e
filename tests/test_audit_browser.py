"""The review backend behind a real Label Studio, and a real browser using it.

Label Studio (from .venv-ls) and `ovrsis audit backend` (tiny SAM) are started by the test and
stopped by PID; `ovrsis audit push --backend` pushes two tiles and connects the backend. Label
Studio must reach the backend for a smart-tool click (its /api/ml/ID/interactive-annotating), and
headless Chromium from Debian's packages, driven by selenium through the system chromedriver
(nothing downloaded at run time), logs in, opens a task, sees the tile and the proposed regions,
clicks once with the smart keypoint tool and sees SAM's region come back. Screenshots are kept in
tests/artifacts/browser/ (ignored by git). Only the browser test skips, and only without a browser.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from audit.cli import app as audit_app
from audit.client import AuditClient, find_project
from audit.queue import connect_backend
from audit.server import start_backend, start_server, stop_server
from audit.settings import ServerSettings
from flows.sample_build import make_imagery
from pipeline.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.ingest import TilingConfig
from taxonomy import load_taxonomy

pytestmark = [pytest.mark.slow, pytest.mark.server]
TOKEN = "fedcba9876543210fedcba9876543210fedcba98"
PASSWORD = "browser-test-pw"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
TITLE = "browser review"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def build_output(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("browser")
    imagery = make_imagery(root / "data", count=1, size=256)
    captions = root / "captions.jsonl"
    captions.write_text(
        json.dumps({"id": "scene0", "caption": "a residential area with buildings, a road and cars"}) + "\n"
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
def servers(tmp_path_factory, build_output, tiny_models_yaml):
    """Label Studio and the ML backend, pushed to with `ovrsis audit push --backend`; both stopped by PID."""
    if not (REPO / ".venv-ls" / "bin" / "label-studio").is_file():
        pytest.fail(".venv-ls is missing: `make test` creates the Label Studio venv")
    data = tmp_path_factory.mktemp("lsdata-browser")
    with ThreadPoolExecutor(2) as pool:  # both start at once: each mostly waits on its own imports
        starting = [
            pool.submit(start_server, data, build_output, TOKEN, "admin@example.com", PASSWORD, port=free_port()),
            pool.submit(start_backend, data, build_output, build_output, str(tiny_models_yaml), port=free_port()),
        ]
        wait(starting)
    started = [f.result() for f in starting if f.exception() is None]
    try:
        label_studio, backend = (f.result() for f in starting)  # raises what a failed start raised
        push = [
            "push",
            "--records",
            str(build_output),
            "--sample",
            "2",
            "--project",
            TITLE,
            "--url",
            label_studio.url,
            "--backend",
            backend.url,
        ]
        result = CliRunner().invoke(audit_app, push, env={"LABEL_STUDIO_USER_TOKEN": TOKEN})
        assert result.exit_code == 0, result.output
        yield label_studio, backend
    finally:
        for server in started:
            stop_server(server.pid)


@pytest.fixture(scope="module")
def project(servers):
    client = AuditClient(ServerSettings(servers[0].url, TOKEN))
    project_id = find_project(client, TITLE)
    tasks = sorted(client.sdk.tasks.list(project=project_id), key=lambda t: t.id)
    (ml,) = client.sdk.ml.list(project=project_id)
    return client, project_id, tasks, ml


def test_label_studio_asks_the_backend_for_smart_tool_masks(servers, project):
    label_studio, backend = servers
    client, project_id, tasks, ml = project
    assert ml.url.rstrip("/") == backend.url and ml.is_interactive and len(tasks) == 2
    assert connect_backend(client, project_id, backend.url + "/", load_taxonomy("ovrsis95k")) == ml.id  # once only
    assert 'smart="true"' in client.sdk.projects.get(id=project_id).label_config
    click = {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "is_positive": True,
        "original_width": 128,
        "original_height": 128,
        "value": {"x": 40.0, "y": 40.0, "width": 0.6, "keypointlabels": ["building"]},
    }
    answer = httpx.post(
        f"{label_studio.url}/api/ml/{ml.id}/interactive-annotating",
        timeout=120,
        headers={"Authorization": f"Token {TOKEN}"},
        json={"task": tasks[0].id, "context": {"result": [click]}},
    )
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    (region,) = answer.json()["data"]["result"]
    assert (region["type"], region["from_name"], region["value"]["brushlabels"]) == (
        "brushlabels",
        "mask",
        ["building"],
    )
    assert (region["original_width"], region["original_height"]) == (128, 128) and region["value"]["format"] == "rle"


def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver (`make setup` installs them), or a skip saying why not."""
    pytest.importorskip("selenium", reason="selenium is not installed (the dev extra: pip install -e '.[dev]')")
    binary = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip(
            "no headless browser: `apt-get install chromium chromium-driver` (make setup does it as root) "
            f"(chromium: {binary or 'missing'}, chromedriver: {driver or 'missing'})"
        )
    return binary, driver


@pytest.fixture
def browser():
    binary, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,1300",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "99-last-state.png"))  # what the browser showed last, pass or fail
    driver.quit()


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last seen: {value!r})")


def test_browser_review_with_the_smart_keypoint_tool(servers, project, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    label_studio, _ = servers
    client, project_id, tasks, _ = project
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    prediction = [r["value"]["brushlabels"][0] for r in client.sdk.predictions.list(task=tasks[0].id)[0].result]
    proposed = set(prediction)

    browser.get(f"{label_studio.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys("admin@example.com")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait_for(lambda: "/user/login" not in browser.current_url, "the login")
    browser.get(f"{label_studio.url}/projects/{project_id}/data?task={tasks[0].id}")

    image = tasks[0].data["image"]  # the tile, served by local-files storage, decoded by the browser
    width = wait_for(
        lambda: browser.execute_script(
            "const i = Array.from(document.images).find(i => i.src.endsWith(arguments[0]) && i.naturalWidth > 0);"
            "return i ? i.naturalWidth : 0;",
            image.split("?d=")[1],
        ),
        "the tile image",
    )
    assert width == 128

    def region_labels() -> list[str]:
        nodes = browser.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item")
        return [" ".join(e.text.split("\n")[1:]) for e in nodes]  # "1\nvehicle": its index, then its label

    wait_for(lambda: proposed <= set(region_labels()) or None, f"the proposed regions {sorted(proposed)}")
    browser.save_screenshot(str(ARTIFACTS / "01-task-with-proposals.png"))
    before = region_labels()

    # the proposals cover every pixel: hide them so the click lands on the image, then the smart keypoint
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Hide all regions']").click()
    browser.find_element(By.CSS_SELECTOR, ".lsf-dynamic-preannotations input").click()  # Auto-Annotation on
    browser.execute_script("document.querySelector('button[aria-label=key-point-tool].lsf-tool_smart').click()")
    keypoint_label = [e for e in browser.find_elements(By.CSS_SELECTOR, ".lsf-label") if e.text == "building"][0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", keypoint_label)
    keypoint_label.click()
    canvas = browser.find_element(By.CSS_SELECTOR, ".konvajs-content")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", canvas)
    time.sleep(0.5)
    ActionChains(browser).move_to_element_with_offset(canvas, -120, -120).click().perform()

    accept = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "[data-testid=bottombar-accept-suggestions-button]"),
        "SAM's suggestion from the backend",
        timeout=120,
    )
    browser.save_screenshot(str(ARTIFACTS / "02-smart-click-suggestion.png"))
    accept[0].click()
    # accepted, SAM's brush region takes the keypoint's place in the region list
    after = wait_for(
        lambda: (labels := region_labels()) and len(labels) == len(before) + 1 and labels, "the accepted region"
    )
    assert after.count("building") == before.count("building") + 1
    time.sleep(0.5)
    browser.save_screenshot(str(ARTIFACTS / "03-sam-region-accepted.png"))

    browser.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()
    (annotation,) = wait_for(lambda: client.sdk.annotations.list(id=tasks[0].id), "the submitted annotation")
    brushes = [r for r in annotation.result if r["type"] == "brushlabels"]
    assert len(brushes) == len(prediction) + 1  # the proposals, kept, and SAM's region
    assert sum(r["value"]["brushlabels"] == ["building"] for r in brushes) == prediction.count("building") + 1
