"""The review backend behind a real Label Studio, and a real browser using it.

Label Studio (from .venv-ls) and `ovrsis audit backend` (tiny SAM) are started by the test suite
(the `label_studio` fixture) and stopped by PID; `ovrsis audit push --backend` pushes two tiles and
connects the backend with its shared secret. Label Studio must reach the backend for a smart-tool click (its
/api/ml/ID/interactive-annotating), and headless Chromium from Debian's packages, driven by
selenium through the system chromedriver (nothing downloaded at run time), logs in, opens a task,
sees the tile and the proposed regions, clicks once with the smart keypoint tool and sees SAM's
region come back. Screenshots are kept in tests/artifacts/browser/ (ignored by git). Only the
browser test skips, and only without a browser.

Every browser step re-finds its element when it acts and waits on a condition (`until`: selenium's
WebDriverWait), never on a fixed sleep: React re-renders Label Studio's panels at any moment, so a
held element can go stale, and a step that only slept may run before the page is ready on a loaded
machine. A step that changes state (a toggle, a tool, a label) then waits until the page shows
the new state, so the next step never races it.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from audit.cli import BACKEND_SECRET_ENV
from audit.cli import app as audit_app
from audit.client import AuditClient, find_project
from audit.queue import connect_backend
from audit.settings import ServerSettings
from flows.sample_build import make_imagery
from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.raster.ingest import TilingConfig
from taxonomy import load_taxonomy
from tests.servers import BACKEND_SECRET, PASSWORD, TOKEN

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = [pytest.mark.slow, pytest.mark.server]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
TITLE = "browser review"
T = TypeVar("T")
WAIT_S = 60.0  # a page step on a loaded 2-core machine; SAM's answer gets longer (SAM_WAIT_S)
SAM_WAIT_S = 120.0
POLL_S = 0.25
# the smart tools' labels follow this header in the labelling config (audit.queue.label_config); the
# mask's labels, which come first, carry the same names
SMART_HEADER = "Smart tools"
Locator = tuple[str, str]  # (By.*, selector); By.CSS_SELECTOR is "css selector"
ACCEPT_SUGGESTIONS: Locator = ("css selector", "[data-testid=bottombar-accept-suggestions-button]")
AUTO_ANNOTATION: Locator = ("css selector", "input[data-testid=bottombar-auto-annotation-toggle]")


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
def served_root(build_output):
    """The module's Label Studio (the `label_studio` fixture) serves the build output."""
    return build_output


@pytest.fixture(scope="module")
def ml_backend_models(tiny_models_yaml):
    """The ML backend beside it (serving the build output too) runs the tiny models."""
    return str(tiny_models_yaml)


@pytest.fixture(scope="module")
def project(label_studio, build_output):
    """Two tiles pushed to Label Studio with `ovrsis audit push --backend`, which connects the ML backend."""
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
        label_studio.backend.url,
    ]
    env = {"LABEL_STUDIO_USER_TOKEN": TOKEN, BACKEND_SECRET_ENV: BACKEND_SECRET}
    result = CliRunner().invoke(audit_app, push, env=env)
    assert result.exit_code == 0, result.output
    client = AuditClient(ServerSettings(label_studio.url, TOKEN))
    project_id = find_project(client, TITLE)
    tasks = sorted(client.sdk.tasks.list(project=project_id), key=lambda t: t.id)
    (ml,) = client.sdk.ml.list(project=project_id)
    return client, project_id, tasks, ml


def test_label_studio_asks_the_backend_for_smart_tool_masks(label_studio, project):
    backend = label_studio.backend
    client, project_id, tasks, ml = project
    assert ml.url.rstrip("/") == backend.url and ml.is_interactive and len(tasks) == 2
    assert (
        connect_backend(client, project_id, backend.url + "/", load_taxonomy("ovrsis95k"), BACKEND_SECRET) == ml.id
    )  # once
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
def browser() -> Iterator[WebDriver]:
    """Headless Chromium; its last screen is kept whether the test passed or not, and it is always
    quit (a failed screenshot must not leave a Chromium running into the next test)."""
    binary, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
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
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        try:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "99-last-state.png"))  # what the browser showed last
        except WebDriverException:
            pass  # a crashed browser has no screen; the test's own error says what went wrong
        finally:
            driver.quit()


def transient_errors() -> tuple[type[Exception], ...]:
    """What a step may meet while React re-renders (an element replaced, not there yet, or covered
    for a moment): `until` retries a step that raised one. Each is raised before the browser acts,
    so a retried click never clicks twice."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
    )

    return (
        StaleElementReferenceException,
        NoSuchElementException,
        ElementClickInterceptedException,
        ElementNotInteractableException,
    )


def until(driver: WebDriver, step: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Run `step` until it returns something truthy, retrying it on `transient_errors`, and return
    that; an AssertionError naming `what` and the last value or error seen on timeout (selenium's
    own TimeoutException says neither)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    retried = transient_errors()
    last: object = None

    def attempt(_: WebDriver) -> T | bool:
        nonlocal last
        try:
            last = step()
        except retried as error:
            last = error
            return False
        return last

    try:
        return WebDriverWait(driver, timeout, poll_frequency=POLL_S).until(attempt)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})") from None


def click(driver: WebDriver, locator: Locator, what: str, transparent: bool = False) -> None:
    """Find the element afresh, wait until it can take a click (shown, enabled) and click it: a
    found-then-clicked element may have been re-rendered in between. `transparent`: the element is
    see-through on purpose (a styled toggle's checkbox, opacity 0, lies over its drawing and takes
    its clicks), which selenium never calls shown, so only enabled is waited for."""

    def attempt() -> bool:
        element = driver.find_element(*locator)
        ready = element.is_enabled() and (transparent or element.is_displayed())
        if ready:
            element.click()
        return ready

    until(driver, attempt, what)


def has_class(element: WebElement, name: str) -> bool:
    """Whether the element carries CSS class `name` (Label Studio marks state with modifier classes)."""
    return name in (element.get_attribute("class") or "").split()


def log_in(driver: WebDriver, url: str) -> None:
    """Log in through Label Studio's form and wait until the browser has left the login page."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/user/login/")
    for name, value in (("email", "admin@example.com"), ("password", PASSWORD)):

        def fill(name: str = name, value: str = value) -> bool:
            field = driver.find_element(By.NAME, name)
            field.clear()  # a retry after a stale field types the whole value again, not twice
            field.send_keys(value)
            return field.get_attribute("value") == value

        until(driver, fill, f"the login form's {name} field")
    click(driver, (By.CSS_SELECTOR, "button[type=submit], input[type=submit]"), "the login button")
    until(driver, lambda: "/user/login" not in driver.current_url, "the login")


def loaded_image_width(driver: WebDriver, name: str) -> int:
    """The natural width of the page's image whose address ends with `name`, once the browser has
    decoded it (0 until then)."""
    return driver.execute_script(
        "const i = Array.from(document.images).find(i => i.src.endsWith(arguments[0]) && i.naturalWidth > 0);"
        "return i ? i.naturalWidth : 0;",
        name,
    )


def region_labels(driver: WebDriver) -> list[str]:
    """The label of every region in the region list, read in one script: elements collected first
    and read one by one later could go stale in between."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('.lsf-outliner-item'), item => item.innerText);"
    )
    # "1\nvehicle": its index, then its label
    return [" ".join(line.strip() for line in text.split("\n")[1:] if line.strip()) for text in texts]


def regions_once(driver: WebDriver, expected: Counter[str]) -> list[str] | None:
    """The region list's labels once they are exactly `expected` (as a multiset) and no suggestion is
    pending, else None: a list read while it is still rendering, or mid-acceptance, may lack some."""
    labels = region_labels(driver)
    return labels if Counter(labels) == expected and not pending_suggestions(driver) else None


def pending_suggestions(driver: WebDriver) -> bool:
    """Whether the bottom bar offers suggestions to accept (it shows them until they are accepted or
    rejected): a suggested region is already in the region list, so the list alone cannot tell."""
    return bool(driver.find_elements(*ACCEPT_SUGGESTIONS))


def hide_all_regions(driver: WebDriver) -> None:
    """Hide every region (the proposals cover every pixel, and a click must land on the image), then
    wait until they are hidden: the button then offers to show them again."""
    from selenium.webdriver.common.by import By

    click(driver, (By.CSS_SELECTOR, "button[aria-label='Hide all regions']"), "the hide-all-regions button")
    shown = (By.CSS_SELECTOR, "button[aria-label='Show all regions']")
    until(driver, lambda: driver.find_elements(*shown), "the regions to be hidden (a 'Show all regions' button)")


def switch_on_auto_annotation(driver: WebDriver) -> None:
    """Auto-Annotation on (the smart tools appear only then): clicked only while off, since a
    second click would switch it off again, then waited for."""
    state = until(driver, lambda: "on" if driver.find_element(*AUTO_ANNOTATION).is_selected() else "off", "its toggle")
    if state == "off":
        click(driver, AUTO_ANNOTATION, "the Auto-Annotation toggle", transparent=True)
    until(driver, lambda: driver.find_element(*AUTO_ANNOTATION).is_selected(), "Auto-Annotation to be on")


def select_smart_keypoint_tool(driver: WebDriver) -> None:
    """The smart keypoint tool, clicked by script (it sits in the Auto-Detect group's panel, shown only
    on hover) once the button exists, then waited for until it is the active tool."""
    from selenium.webdriver.common.by import By

    button = "button[aria-label=key-point-tool].lsf-tool_smart"
    until(
        driver,
        lambda: driver.execute_script(f"const b = document.querySelector('{button}'); if (b) b.click(); return !!b;"),
        "the smart keypoint tool's button",
    )
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, f"{button}.lsf-tool_active"), "the smart keypoint tool")


def select_smart_label(driver: WebDriver, label: str) -> None:
    """Select `label` among the smart tools' labels (not the mask's label of the same name, which
    comes first): scrolled into view and clicked only while unselected (a click on a selected
    label unselects it), then waited for until it shows as selected."""
    from selenium.webdriver.common.by import By

    locator = (
        By.XPATH,
        f"//*[text()[starts-with(normalize-space(), '{SMART_HEADER}')]]/following::span"
        f"[contains(concat(' ', normalize-space(@class), ' '), ' lsf-label ')][normalize-space()='{label}'][1]",
    )

    def attempt() -> bool:
        element = driver.find_element(*locator)
        if not has_class(element, "lsf-label_selected"):
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()
        return True

    until(driver, attempt, f"the smart label {label!r}")
    until(driver, lambda: has_class(driver.find_element(*locator), "lsf-label_selected"), f"{label!r} selected")


def click_image_when_still(driver: WebDriver, dx: int, dy: int) -> None:
    """Scroll the image canvas to the top of the window and click it at (dx, dy) from its centre once
    it lies wholly in the window and has not moved since the previous look: WebDriver measures the
    offset from the centre of the canvas's visible part, so a canvas still scrolling or partly out
    of view would take the click somewhere else."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    previous: list[float] | None = None

    def attempt() -> bool:
        nonlocal previous
        canvas = driver.find_element(By.CSS_SELECTOR, ".konvajs-content")
        box = driver.execute_script(
            "arguments[0].scrollIntoView({block: 'start', behavior: 'instant'});"
            "const r = arguments[0].getBoundingClientRect();"
            "return [r.left, r.top, r.right, r.bottom, window.innerWidth, window.innerHeight];",
            canvas,
        )
        left, top, right, bottom, width, height = box
        still, previous = box == previous, box
        if not (still and left >= 0 and top >= 0 and right <= width and bottom <= height):
            return False
        ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
        return True

    until(driver, attempt, "the image canvas, wholly in view and still")


def test_browser_review_with_the_smart_keypoint_tool(label_studio, project, browser):
    from selenium.webdriver.common.by import By

    client, project_id, tasks, _ = project
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    prediction = [r["value"]["brushlabels"][0] for r in client.sdk.predictions.list(task=tasks[0].id)[0].result]

    log_in(browser, label_studio.url)
    browser.get(f"{label_studio.url}/projects/{project_id}/data?task={tasks[0].id}")
    image = tasks[0].data["image"]  # the tile, served by local-files storage, decoded by the browser
    assert until(browser, lambda: loaded_image_width(browser, image.split("?d=")[1]), "the tile image") == 128

    # every proposed region listed, none missing (a list read half-rendered would miscount them below)
    before = until(
        browser,
        lambda: regions_once(browser, Counter(prediction)),
        f"the proposed regions {sorted(prediction)} in the region list",
    )
    browser.save_screenshot(str(ARTIFACTS / "01-task-with-proposals.png"))

    # the proposals cover every pixel: hide them so the click lands on the image, then the smart keypoint
    hide_all_regions(browser)
    switch_on_auto_annotation(browser)
    select_smart_keypoint_tool(browser)
    select_smart_label(browser, "building")
    click_image_when_still(browser, -120, -120)

    until(browser, lambda: pending_suggestions(browser), "SAM's suggestion from the backend", timeout=SAM_WAIT_S)
    browser.save_screenshot(str(ARTIFACTS / "02-smart-click-suggestion.png"))
    click(browser, ACCEPT_SUGGESTIONS, "the accept-suggestions button")
    # accepted: no suggestion pending, and SAM's brush region has taken the keypoint's place in the list
    expected = Counter(before) + Counter(["building"])
    until(browser, lambda: regions_once(browser, expected), f"the accepted region: {sorted(expected.elements())}")
    browser.save_screenshot(str(ARTIFACTS / "03-sam-region-accepted.png"))

    click(browser, (By.CSS_SELECTOR, "button[data-testid=bottombar-submit-button]"), "the Submit button")
    (annotation,) = until(browser, lambda: client.sdk.annotations.list(id=tasks[0].id), "the submitted annotation")
    brushes = [r for r in annotation.result if r["type"] == "brushlabels"]
    assert len(brushes) == len(prediction) + 1  # the proposals, kept, and SAM's region
    assert sum(r["value"]["brushlabels"] == ["building"] for r in brushes) == prediction.count("building") + 1
