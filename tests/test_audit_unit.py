"""Audit pieces that need no server: brush RLE, sampling, applying a review, statistics."""

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from audit.queue import label_config, stratified_sample, uncertain_sample
from audit.stats import wilson
from pipeline.records import Conflict, Domain, Instance, SourceInfo, TileRecord, Window
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
