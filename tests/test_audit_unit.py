"""Audit pieces that need no server: brush RLE, sampling, applying a review, statistics."""

from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from audit.queue import label_config, stratified_sample, uncertain_sample
from audit.stats import wilson
from pipeline.dataset.records import Conflict, Domain, Instance, SourceInfo, TileRecord, Window
from taxonomy import load_taxonomy


@pytest.mark.parametrize("shape", [(256, 256), (300, 301), (37, 1), (1, 53), (1024, 999)])
def test_brush_rle_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in (rng.random(shape) > 0.6, np.zeros(shape, bool), np.ones(shape, bool)):
        rle = mask2rle((mask * 255).astype(np.uint8))
        decoded = decode_rle(rle).reshape(*shape, 4)[:, :, 3] > 127
        assert np.array_equal(decoded, mask)


def record(key, domain, score=0.9, conflicts=0):
    source = SourceInfo(
        path="x",
        sha256="",
        window=Window(row_off=0, col_off=0, height=8, width=8),
        band_mapping=[1, 2, 3],
        stretch="none",
        dtype="uint8",
        raster_width=8,
        raster_height=8,
    )
    return TileRecord(
        key=key,
        source=source,
        domain=Domain(name=domain, score=1),
        instances=[Instance(category="road", box=[0, 0, 1, 1], detector_score=score, mask_score=1.0, area=4)],
        conflicts=[Conflict(winner=0, loser=0, winner_category="a", loser_category="b", pixels=1, rule="x")]
        * conflicts,
    )


def test_stratified_sample_is_proportional_and_reproducible():
    records = [record(f"t{i:03d}", "town" if i < 60 else "forest" if i < 90 else "waterfront") for i in range(100)]
    sample = stratified_sample(records, 20, seed=3)
    assert [r.key for r in sample] == [r.key for r in stratified_sample(list(reversed(records)), 20, seed=3)]
    domains = [r.domain.name for r in sample]
    assert (domains.count("town"), domains.count("forest"), domains.count("waterfront")) == (12, 6, 2)
    assert stratified_sample(records, 20, seed=4) != sample
    assert len(stratified_sample(records, 500, seed=1)) == 100


def test_uncertain_queue_puts_conflicts_and_low_scores_first():
    records = [record("sure", "town", 0.95), record("weak", "town", 0.2), record("clash", "town", 0.9, conflicts=2)]
    assert [r.key for r in uncertain_sample(records, 2)] == ["clash", "weak"]


def test_label_config_names_every_category():
    config = label_config(load_taxonomy("ovrsis95k"))
    assert config.count("<Label ") == 35 and 'value="$proposed_options"' in config and "$conflicts_note" in config


def test_wilson_interval():
    low, high = wilson(97, 100)
    assert (low, high) == pytest.approx(
        (0.9155, 0.9897), abs=1e-4
    )  # statsmodels' proportion_confint(97, 100, method="wilson")
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_secrets_are_redacted_from_server_errors_and_urls():
    from label_studio_sdk.core.api_error import ApiError

    from audit.client import AuditClient
    from audit.settings import AuditError, ServerSettings, redact

    token = "0123456789abcdef0123456789abcdef01234567"
    settings = ServerSettings("http://admin:s3cret-pw@127.0.0.1:8089", token)
    assert "s3cret" not in settings.safe_url and settings.safe_url.startswith("http://admin:***@127.0.0.1")
    body = {"detail": "boom", "headers": {"Authorization": f"Token {token}", "X-Other": "Bearer abcdefgh12345678"}}

    def failing():
        raise ApiError(status_code=500, body=body)

    with pytest.raises(AuditError, match="HTTP 500") as error:
        AuditClient(settings, retries=1, backoff=0).call("reading tasks", failing)
    assert token not in str(error.value) and "abcdefgh12345678" not in str(error.value) and "boom" in str(error.value)
    assert redact("password=hunter2hunter2 and https://u:p4ss@host/x") == "password=*** and https://u:***@host/x"


def test_server_stop_needs_no_root(tmp_path):
    import subprocess
    import sys

    from typer.testing import CliRunner

    from audit.cli import app

    missing = CliRunner().invoke(app, ["server", "--stop", "--data", str(tmp_path)])
    assert missing.exit_code == 2 and "nothing to stop" in missing.output and "--root" not in missing.output
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    (tmp_path / "label-studio.pid").write_text(str(sleeper.pid))
    stopped = CliRunner().invoke(app, ["server", "--stop", "--data", str(tmp_path)])
    sleeper.wait(timeout=20)  # ended (TimeoutExpired otherwise)
    assert stopped.exit_code == 0 and not (tmp_path / "label-studio.pid").exists()
    start = CliRunner().invoke(app, ["server", "--data", str(tmp_path)])
    assert start.exit_code == 2 and "--root is needed" in start.output


REPO = Path(__file__).resolve().parents[1]


def fake_label_studio(venv: Path) -> Path:
    """A venv folder holding a `bin/label-studio` file, as `make setup` leaves one."""
    binary = venv / "bin" / "label-studio"
    binary.parent.mkdir(parents=True)
    binary.touch()
    return binary


def test_label_studio_venv_is_looked_for_beside_the_project_from_any_working_directory(tmp_path, monkeypatch):
    from audit.server import LS_VENV_ENV, project_root, venv_places

    monkeypatch.delenv(LS_VENV_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == REPO
    here = Path.cwd() / ".venv-ls"
    assert venv_places() == [(REPO / ".venv-ls", "beside the project"), (here, "in the working directory")]
    monkeypatch.chdir(REPO)  # run from the project: one place, looked at once
    assert venv_places() == [(REPO / ".venv-ls", "beside the project")]


def test_label_studio_venv_order_option_then_setting_then_project_then_working_directory(tmp_path, monkeypatch):
    from audit import server
    from audit.settings import AuditError

    monkeypatch.delenv(server.LS_VENV_ENV, raising=False)
    project, work = tmp_path / "project", tmp_path / "work"
    project.mkdir()
    monkeypatch.setattr(server, "project_root", lambda: project)
    here = fake_label_studio(work / ".venv-ls")
    monkeypatch.chdir(work)
    assert server.label_studio_binary().resolve() == here.resolve()  # nothing beside the project
    beside = fake_label_studio(project / ".venv-ls")
    assert server.label_studio_binary() == beside
    named = fake_label_studio(tmp_path / "named")
    monkeypatch.setenv(server.LS_VENV_ENV, str(tmp_path / "named"))
    assert server.label_studio_binary() == named
    option = fake_label_studio(tmp_path / "option")
    assert server.label_studio_binary(tmp_path / "option") == option
    # a venv named by the option or the setting is the only place: a typo fails, naming it and its source
    with pytest.raises(AuditError, match=r"typo/bin/label-studio \(--venv\)"):
        server.label_studio_binary(tmp_path / "typo")
    monkeypatch.setenv(server.LS_VENV_ENV, str(tmp_path / "typo"))
    with pytest.raises(AuditError, match=rf"typo/bin/label-studio \({server.LS_VENV_ENV}\)"):
        server.label_studio_binary()


def test_audit_server_without_label_studio_names_every_place_looked_and_the_setting(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from audit import server
    from audit.cli import app

    monkeypatch.delenv(server.LS_VENV_ENV, raising=False)
    monkeypatch.setattr(server, "project_root", lambda: tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    env = {"LABEL_STUDIO_USER_TOKEN": "0123456789abcdef0123456789abcdef01234567", "LABEL_STUDIO_PASSWORD": "pw-pw-pw"}
    result = CliRunner().invoke(app, ["server", "--root", str(tmp_path)], env=env)
    message = " ".join(result.output.split())  # the error is wrapped to the terminal's width
    assert result.exit_code == 2, result.output
    for looked in (tmp_path / "project" / ".venv-ls", tmp_path / ".venv-ls"):
        assert f"{looked / 'bin' / 'label-studio'}" in message, message
    assert "OVRSIS_LABEL_STUDIO_VENV" in message and "--venv" in message, message
    assert not (tmp_path / ".lsdata").exists()  # nothing made for a server that cannot start
    usage = " ".join(CliRunner().invoke(app, ["server", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--venv" in usage and "OVRSIS_LABEL_STUDIO_VENV if set, else .venv-ls beside the project" in usage


def rates(accepted: int, corrected: int, discarded: int) -> dict:
    from audit.stats import Rate

    total = accepted + corrected + discarded
    return {"accepted": Rate(accepted, total), "corrected": Rate(corrected, total), "discarded": Rate(discarded, total)}


def test_audit_charts_label_every_bar_and_keep_the_legend_off_the_bars(tmp_path):
    from audit.stats import iou_figure, rates_figure

    stats = {
        "per_category": {"building": rates(124, 12, 12), "road": rates(148, 0, 0), "low vegetation": rates(5, 0, 1)},
        "mask_iou": [0.52, 0.91, 0.96, 1.0],
    }
    figure = rates_figure(stats, "sample")
    figure.savefig(tmp_path / "rates.png")  # lays it out as the report does
    renderer = figure.canvas.get_renderer()
    (axis,) = figure.axes
    (legend,) = figure.legends
    legend_box, axes_box = legend.get_window_extent(renderer), axis.get_window_extent(renderer)
    assert len(axis.patches) == 9
    assert not any(legend_box.overlaps(bar.get_window_extent(renderer)) for bar in axis.patches)
    assert legend_box.y1 <= axes_box.y0  # below the axes, not over the data
    labels = {text.get_text(): text.get_window_extent(renderer) for text in axis.texts}
    assert {"83.8 % (124/148)", "8.1 % (12/148)", "100.0 % (148/148)", "0.0 % (0/148)", "16.7 % (1/6)"} <= set(labels)
    assert all(axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 for box in labels.values())  # none runs off
    assert axis.get_xlabel().endswith("(%)")

    iou = iou_figure(stats, "sample")
    (axis,) = iou.axes
    assert sorted(text.get_text() for text in axis.texts if text.get_text()) == ["1", "1", "2"]  # masks per bar
    assert axis.get_ylabel() == "reviewed masks (count)" and "(0–1" in axis.get_xlabel()
