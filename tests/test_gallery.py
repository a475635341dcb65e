"""`ovrsis view`: the static gallery of an output folder, written to OUT/gallery/ and opened from disk.

The folder is a real `ovrsis annotate` output (tiny models, two 256 px GeoTIFFs in 128 px tiles and a
file that is no raster, quarantined at ingest), with the review states a build's ledger gives records
(reviewed, stale, queued), records someone else wrote (a key that is HTML, a caption that closes the
script, a domain with markup, a key that climbs out of masks/), a tile whose source raster moved and a
line that is no record. The browser test opens index.html in headless Chromium (Debian's, through
selenium and the system chromedriver, as tests/test_audit_browser.py does; it skips without them) and
checks what a person would: the thumbnails load, the legends name the classes, the filters and the
pager show the right tiles, and nothing from a record runs as HTML.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app as ovrsis
from flows.sample_build import make_imagery
from pipeline.build.annotate import AnnotateConfig, Annotator, load_caption_file
from pipeline.cli.terminal import EXIT_OK, EXIT_PARTIAL, EXIT_REFUSED
from pipeline.dataset.records import AuditDecision, Domain, ReviewRef, TileRecord
from pipeline.export import gallery
from pipeline.export.gallery import GalleryError, write_gallery
from pipeline.files.atomic import output_lock
from pipeline.raster.ingest import TilingConfig
from pipeline.raster.outputs import palette
from taxonomy import load_taxonomy

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
HOSTILE_KEY = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_CAPTION = '</script><script>document.title="pwned"</script>'
HOSTILE_DOMAIN = "<b>bold</b>"
CLIMBING_KEY = "../../escape"
MOVED_KEY = "moved__r0_c0"
REVIEWED, STALE, QUEUED = "scene0__r0_c0", "scene0__r0_c128", "scene0__r128_c0"
WAIT_S = 60.0
runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models) -> Path:
    """An annotate output with reviewed, stale, queued, hostile, moved and quarantined tiles (12) and a bad line."""
    root = tmp_path_factory.mktemp("gallery")
    imagery = make_imagery(root / "data", count=2, size=256)
    out = root / "out"
    taxonomy = load_taxonomy("ovrsis95k")
    captions = load_caption_file(root / "captions.jsonl")
    Annotator(taxonomy, tiny_models, out, AnnotateConfig(tiling=TilingConfig(128)), captions=captions).run(imagery)
    records = {r.key: r for r in map(TileRecord.model_validate_json, (out / "records.jsonl").read_text().splitlines())}
    review = dict(project_id=1, task_id=2, annotation_id=3, updated_at="2026-01-02T03:04:05Z", reviewer="a@b.example")
    records[REVIEWED].review = ReviewRef(queue="sample", **review)
    records[STALE].review = ReviewRef(queue="stale", stale=True, **review)
    records[QUEUED].audit = [AuditDecision(target="category:road")]
    template = records["scene1__r0_c0"]
    hostile = template.model_copy(deep=True, update={"key": HOSTILE_KEY})
    hostile.captions[0].text, hostile.domain = HOSTILE_CAPTION, Domain(name=HOSTILE_DOMAIN, score=1.0)
    climbing = template.model_copy(deep=True, update={"key": CLIMBING_KEY})
    moved = template.model_copy(deep=True, update={"key": MOVED_KEY})
    moved.source.path = str(root / "gone" / "scene1.tif")
    moved.captions[0].text = "a very long caption " * 500
    for key in (HOSTILE_KEY, MOVED_KEY):
        shutil.copyfile(out / "masks" / "scene1__r0_c0.png", out / "masks" / f"{key}.png")
    lines = [r.model_dump_json() for r in [*records.values(), hostile, climbing, moved]] + ['{"key": "half a line']
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture
def out(built, tmp_path) -> Path:
    """A copy of the built folder (the source rasters stay where the records say)."""
    return Path(shutil.copytree(built, tmp_path / "out"))


def mask_of(out: Path, key: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / f"{key}.png"))


def tiles_js(folder: Path) -> tuple[list[list], dict]:
    """The rows and meta of data/tiles.js (JSON literals, one row a line)."""
    text = (folder / "data" / "tiles.js").read_text()
    rows = [json.loads(line.rstrip(",")) for line in text.splitlines() if line.startswith("[[")]
    meta = json.loads(text.split("OVRSIS_GALLERY.meta = ", 1)[1].rstrip().removesuffix(";"))
    return rows, meta


def cards_js(folder: Path) -> list[dict]:
    cards = []
    for number in range(len(list((folder / "data").glob("chunk-*.js")))):
        text = (folder / "data" / f"chunk-{number}.js").read_text()
        cards += json.loads(text.split(", ", 1)[1].rstrip().removesuffix(");"))
    return cards


def files_outside(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and skip not in p.parents}


def test_gallery_holds_thumbnails_legends_and_states_and_writes_only_into_its_folder(out):
    taxonomy = load_taxonomy("ovrsis95k")
    before = {p: p.stat().st_mtime_ns for p in files_outside(out.parent, out / "gallery")}
    summary = write_gallery(out, taxonomy, thumb_size=64)
    folder = out / "gallery"
    assert {p: p.stat().st_mtime_ns for p in files_outside(out.parent, folder)} == before
    assert (summary.tiles, summary.quarantined, summary.problem_tiles, summary.bad_lines) == (12, 1, 2, 1)
    assert summary.index == folder / "index.html" and summary.index.is_file()
    rows, meta = tiles_js(folder)
    cards = cards_js(folder)
    assert [c["k"] for c in cards][-3:] == [HOSTILE_KEY, CLIMBING_KEY, MOVED_KEY] and len(rows) == len(cards) == 12
    by_key = {card["k"]: (ordinal, card, rows[ordinal]) for ordinal, card in enumerate(cards)}
    states = {key: (row[2], row[3]) for key, (_, _, row) in by_key.items()}
    assert states[REVIEWED] == (1, 0) and states[STALE] == (2, 0) and states[QUEUED] == (3, 0)
    assert states["broken__r0_c0"] == (0, 1) and states["scene1__r0_c0"] == (0, 0)
    assert by_key["broken__r0_c0"][1]["q"][0] == "ingest" and "t" not in by_key["broken__r0_c0"][1]
    assert meta["domains"][by_key[HOSTILE_KEY][2][1]] == HOSTILE_DOMAIN
    assert "no mask" in by_key[CLIMBING_KEY][1]["p"][0] and by_key[CLIMBING_KEY][2][0] == []
    assert "image unavailable" in by_key[MOVED_KEY][1]["p"][0] and by_key[MOVED_KEY][1]["t"] == "m"
    assert len(by_key[MOVED_KEY][1]["c"]) == 300  # a record's text is cut: it cannot swell the page
    colours = palette(len(taxonomy))
    for key in (REVIEWED, "scene1__r128_c128"):
        ordinal, card, row = by_key[key]
        mask = mask_of(out, key)
        values, counts = np.unique(mask, return_counts=True)
        assert sorted(row[0]) == values.tolist()  # every value is a class here: the filter's classes
        assert [v for v, _ in card["l"]] == values[np.argsort(-counts, kind="stable")].tolist()
        assert sum(share for _, share in card["l"]) == pytest.approx(100, abs=0.5)
        thumbs = folder / "thumbs" / "0"
        coloured = np.asarray(Image.open(thumbs / f"{ordinal}.m.png").convert("RGB"))
        small = np.asarray(Image.fromarray(mask).resize((64, 64), Image.NEAREST))
        assert coloured.shape == (64, 64, 3) and np.array_equal(coloured, colours[small])
        for name in (f"{ordinal}.i.jpg", f"{ordinal}.o.jpg"):
            assert Image.open(thumbs / name).size == (64, 64)
    tiles_per_class = Counter(v for row in rows for v in row[0])
    assert meta["counts"]["classes"] == {str(v): n for v, n in tiles_per_class.items()}
    assert meta["counts"]["quarantined"] == 1 and meta["classes"] == taxonomy.names and len(meta["problems"]) == 3


def test_view_writes_the_gallery_replaces_it_on_rerun_and_reports_incomplete_tiles(out):
    first = runner.invoke(ovrsis, ["view", str(out)])
    assert first.exit_code == EXIT_PARTIAL, first.output
    last = first.stderr.strip().splitlines()[-1]
    assert "2 of 12 tiles shown incomplete, 1 line(s)" in last and str(out / "gallery" / "index.html") in last
    assert "image unavailable" in first.stderr and (out / "gallery" / "index.html").resolve().as_uri() in first.stderr
    (out / "gallery" / "planted.txt").write_text("left by a user")
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:9]) + "\n")  # the annotated tiles only
    again = runner.invoke(ovrsis, ["view", str(out), "--taxonomy", "ovrsis95k"])
    assert again.exit_code == EXIT_OK, again.output
    assert not (out / "gallery" / "planted.txt").exists() and len(tiles_js(out / "gallery")[0]) == 9
    assert not list(out.glob(".gallery.*"))  # nothing of the swap left beside it


def refused_line(args: list[str]) -> str:
    result = runner.invoke(ovrsis, args)
    assert result.exit_code == EXIT_REFUSED, result.output
    return result.stderr.strip().splitlines()[-1]


def test_view_refuses_a_folder_that_is_no_output_folder(tmp_path):
    line = refused_line(["view", str(tmp_path / "nothing")])
    assert line.startswith("error: ") and str(tmp_path / "nothing" / "records.jsonl") in line
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "records.jsonl").write_text("")
    line = refused_line(["view", str(tmp_path / "empty"), "--taxonomy", "ovrsis95k"])
    assert line == f"error: {tmp_path / 'empty' / 'records.jsonl'}: empty, no tile to show"
    assert not (tmp_path / "empty" / "gallery").exists()
    (tmp_path / "empty" / "records.jsonl").write_text('\n{"key": 1}\n')
    line = refused_line(["view", str(tmp_path / "empty"), "--taxonomy", "ovrsis95k"])
    assert line.startswith(f"error: {tmp_path / 'empty' / 'records.jsonl'}: none of its 1 lines is a tile record")
    assert "records.jsonl:2: not a tile record" in line


def test_view_refuses_a_gallery_folder_it_did_not_write_and_a_busy_folder(out, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "gallery").symlink_to(elsewhere)
    assert "was not written by `ovrsis view`" in refused_line(["view", str(out)])
    (out / "gallery").unlink()
    (out / "gallery").mkdir()
    (out / "gallery" / "mine.txt").write_text("a user's file")
    with pytest.raises(GalleryError, match="move it away"):
        write_gallery(out, load_taxonomy("ovrsis95k"))
    assert (out / "gallery" / "mine.txt").read_text() == "a user's file" and list(elsewhere.iterdir()) == []
    shutil.rmtree(out / "gallery")
    with output_lock(out):
        assert "being written by another process" in refused_line(["view", str(out)])
    assert not (out / "gallery").exists()


# --- the page in a real browser -------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from Debian's packages, driven by selenium through the system chromedriver
    (nothing downloaded); always quit."""
    pytest.importorskip("selenium", reason="selenium is not installed (the dev extra)")
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no headless browser: `apt-get install chromium chromium-driver` (make setup does it as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1600,1100")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, step: Callable[[], T], what: str) -> T:
    """`step` once it returns something truthy; an AssertionError naming `what` and the last value on timeout."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    last: list[object] = [None]

    def attempt(_: WebDriver) -> T:
        last[0] = step()
        return last[0]  # type: ignore[return-value]

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(attempt)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what} (last seen: {last[0]!r})") from None


def shown_cards(driver: WebDriver) -> list[dict]:
    """Each card on the page: its key, legend names, badges and whether its thumbnails decoded."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#grid .card'), c => ({"
        " key: c.querySelector('h2').textContent,"
        " legend: Array.from(c.querySelectorAll('.legend .name'), n => n.textContent),"
        " badges: Array.from(c.querySelectorAll('.badge'), b => b.textContent),"
        " images: Array.from(c.querySelectorAll('img'), i => i.naturalWidth),"
        " text: c.textContent}));"
    )


def choose(driver: WebDriver, select: str, value: str | int) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select)).select_by_value(str(value))


def keys_once(driver: WebDriver, expected: set[str], decoded: bool = False) -> list[dict] | None:
    """The cards once they are those of `expected` (and, with `decoded`, every thumbnail has decoded:
    each image is scrolled to, since they load lazily), else None."""
    if decoded:
        driver.execute_script("document.querySelectorAll('#grid img').forEach(i => i.scrollIntoView())")
    cards = shown_cards(driver)
    if {c["key"] for c in cards} != expected or (decoded and not all(w > 0 for c in cards for w in c["images"])):
        return None
    return cards


def click(driver: WebDriver, label: str) -> None:
    driver.find_element("xpath", f"//nav[@id='pager-top']/button[normalize-space()='{label}']").click()


@pytest.mark.slow
def test_gallery_in_a_browser_loads_thumbnails_shows_legends_filters_and_pages(out, browser, monkeypatch):
    taxonomy = load_taxonomy("ovrsis95k")
    monkeypatch.setattr(gallery, "PAGE_TILES", 5)  # three pages, cards from several chunk files and thumbnail folders
    monkeypatch.setattr(gallery, "CHUNK_TILES", 4)
    monkeypatch.setattr(gallery, "FOLDER_TILES", 5)
    index = write_gallery(out, taxonomy).index
    records = [TileRecord.model_validate_json(line) for line in (out / "records.jsonl").read_text().splitlines()[:-1]]
    keys = [r.key for r in records]
    browser.get(index.as_uri())
    first = until(browser, lambda: keys_once(browser, set(keys[:5])), "the first page's five cards")
    click(browser, "next ›")
    until(browser, lambda: keys_once(browser, set(keys[5:10])), "the second page")
    click(browser, "last »")
    until(browser, lambda: keys_once(browser, set(keys[10:])), "the last page")
    assert "quarantined at ingest: " in first[0]["text"] and first[0]["images"] == []

    # every thumbnail decodes; the legend names the mask's classes, largest share first
    choose(browser, "quarantine", 0)
    pages = [keys[1:6], keys[6:11], keys[11:]]
    shown = []
    for number, page in enumerate(pages):
        shown += until(browser, lambda page=page: keys_once(browser, set(page), decoded=True), f"page {number + 1}")
        if number < len(pages) - 1:
            click(browser, "next ›")
    by_key = {c["key"]: c for c in shown}
    assert by_key[REVIEWED]["images"] == [128, 128, 128]
    values, counts = np.unique(mask_of(out, REVIEWED), return_counts=True)
    names = [taxonomy.names[v] for v in values[np.argsort(-counts, kind="stable")]]
    background = {taxonomy.names[v] for v in taxonomy.background_indices}
    assert by_key[REVIEWED]["legend"] == [n + (" (background)" if n in background else "") for n in names]
    assert by_key[REVIEWED]["badges"][1] == "reviewed · sample" and by_key[STALE]["badges"][1] == "stale review · stale"
    assert by_key[QUEUED]["badges"][1] == "queued, pending review"
    assert by_key[MOVED_KEY]["images"] == [128] and "image unavailable" in by_key[MOVED_KEY]["text"]
    assert by_key[CLIMBING_KEY]["images"] == [] and "no mask" in by_key[CLIMBING_KEY]["text"]

    # a category shows exactly the tiles whose mask holds it
    choose(browser, "quarantine", "")
    present = {k: set(np.unique(mask_of(out, k)).tolist()) for k in keys if k not in ("broken__r0_c0", CLIMBING_KEY)}
    tiles_with = {v: {k for k, p in present.items() if v in p} for v in range(len(taxonomy))}
    rare = min((v for v in tiles_with if tiles_with[v]), key=lambda v: len(tiles_with[v]))
    expected = tiles_with[rare]
    assert len(expected) < len(present)
    choose(browser, "category", rare)
    cards = until(browser, lambda: keys_once(browser, expected), f"the tiles showing {taxonomy.names[rare]}")
    assert all(taxonomy.names[rare] in c["legend"] for c in cards)

    # review state, domain and quarantine filters; the hostile record is text, never markup
    choose(browser, "category", "")
    for state, key in ((1, REVIEWED), (2, STALE), (3, QUEUED)):
        choose(browser, "review", state)
        until(browser, lambda key=key: keys_once(browser, {key}), f"review state {state}")
    choose(browser, "review", "")
    domain = browser.execute_script("return OVRSIS_GALLERY.meta.domains.indexOf(arguments[0])", HOSTILE_DOMAIN)
    choose(browser, "domain", domain)
    (card,) = until(browser, lambda: keys_once(browser, {HOSTILE_KEY}), "the hostile domain's tile")
    assert HOSTILE_CAPTION in card["text"] and card["badges"][0] == HOSTILE_DOMAIN
    assert (
        browser.title.endswith("ovrsis gallery")
        and browser.execute_script("return document.querySelectorAll('#grid b, #grid script, img[src=\"x\"]').length")
        == 0
    )
    choose(browser, "domain", "")
    choose(browser, "quarantine", 1)
    (card,) = until(browser, lambda: keys_once(browser, {"broken__r0_c0"}), "the quarantined tile")
    assert "cannot be read as a raster" in card["text"]

    choose(browser, "quarantine", "")
    monkeypatch.undo()  # the screenshot: a page as a user sees it, 48 cards
    index = write_gallery(out, taxonomy).index
    browser.get(index.as_uri())
    until(browser, lambda: len(shown_cards(browser)) == 12, "the whole gallery")
    browser.execute_script("window.scrollTo(0, 0)")
    until(browser, lambda: all(w > 0 for c in shown_cards(browser)[1:5] for w in c["images"]), "the first thumbnails")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "gallery.png"))
