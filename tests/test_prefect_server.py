"""The README's sequence against a real Prefect server: start it, serve the deployment, run it with
the Prefect CLI, check the shards and the artifacts on the flow run the CLI started (not a subflow),
look at them in headless Chromium the way a user would (charts that load, tables that read), stop
both processes by PID. Screenshots are kept in tests/artifacts/browser/ (ignored by git)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_audit_browser import ARTIFACTS, browser  # noqa: F401 (a fixture)

from flows.sample_build import make_imagery, ovrsis, prefect_env, write_config
from pipeline.dataset.shards import ShardReader, verify_shards

pytestmark = [pytest.mark.slow, pytest.mark.server]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"process exited early:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def test_served_deployment_builds_shards(tmp_path, tiny_models_yaml, browser):  # noqa: F811 (the fixture)
    imagery = make_imagery(tmp_path / "data" / "rasters", count=2, size=256)
    config = write_config(tmp_path / "build.yaml", imagery, tiny_models_yaml, tmp_path / "out")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path / "prefect-home", api) | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"PREFECT_UI_API_URL": api}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=open(server_log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serving = None
    try:
        wait_for(f"{api}/health", 90, server, server_log)
        serving = subprocess.Popen(
            ovrsis("serve"),
            env=env | {"PREFECT_LOGGING_LEVEL": "INFO"},  # the run's progress lines reach its Logs tab
            stdout=open(serve_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(f"{api}/deployments/name/build-ovrsis95k/local", 60, serving, serve_log)
        run = subprocess.run(
            [PREFECT, "deployment", "run", "build-ovrsis95k/local", "--param", f"config={config}", "--watch"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + serve_log.read_text()[-3000:]
        assert "Completed" in run.stdout
        assert verify_shards(tmp_path / "out") == []
        manifest = ShardReader(tmp_path / "out").manifest
        assert sum(s["samples"] for s in manifest["splits"].values()) == 8
        runs = post(f"{api}/flow_runs/filter", {})
        assert any(r["state_type"] == "COMPLETED" for r in runs)
        (started,) = [r for r in runs if r["deployment_id"]]  # the run `prefect deployment run` started
        logs = [
            row["message"] for row in post(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [started["id"]]}}})
        ]
        assert any(line.startswith("annotating: 9/9 tiles (100%)") for line in logs), logs
        artifacts = {a["key"]: a for a in post(f"{api}/artifacts/filter", {}) if a["key"]}
        expected = {"balance-report", "shards", "quarantine", "manifest", "build-progress"}
        assert expected <= set(artifacts), sorted(artifacts)
        assert {artifacts[key]["flow_run_id"] for key in expected} == {started["id"]}
        assert artifacts["build-progress"]["data"] == 100.0
        balance = artifacts["balance-report"]["data"]
        assert "![tiles per category](data:image/png;base64," in balance and "](categories.png)" not in balance
        assert "The build annotated 9 tiles" in balance
        shards = (
            json.loads(artifacts["shards"]["data"])
            if isinstance(artifacts["shards"]["data"], str)
            else artifacts["shards"]["data"]
        )
        assert sum(row["samples"] for row in shards) == 8 and {row["split"] for row in shards} == {"train", "val"}
        quarantine = artifacts["quarantine"]["data"]
        quarantine = json.loads(quarantine) if isinstance(quarantine, str) else quarantine
        assert [row["key"].split("__")[0] for row in quarantine] == ["broken"], quarantine
        summary = artifacts["manifest"]["data"]
        assert "8 samples (" in summary and "file://" not in summary
        for name, category in manifest["categories"].items():
            if category["images"]:
                assert f"| {name} | {category['images']} | {category['pixels']} |" in summary
        look_at_the_run(browser, f"http://127.0.0.1:{port}", started["id"], artifacts["balance-report"]["id"])
    finally:
        if serving is not None:
            stop(serving)
        stop(server)
    assert server.returncode is not None and (serving is None or serving.returncode is not None)


def look_at_the_run(browser, ui: str, run_id: str, balance_id: str) -> None:  # noqa: F811 (the fixture)
    """The run's Artifacts tab lists the artifacts, and the balance report's page shows its charts as
    loaded images (a broken image has naturalWidth 0), as a user opening the Prefect UI sees them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(browser, 120, poll_frequency=0.5)
    browser.get(f"{ui}/runs/flow-run/{run_id}")
    wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "li.p-tab#artifacts"))[0].click()
    listed = ("balance-report", "manifest", "shards", "quarantine", "build-progress")
    wait.until(lambda page: all(key in page.find_element(By.TAG_NAME, "body").text for key in listed))
    browser.save_screenshot(str(ARTIFACTS / "prefect-run-artifacts.png"))
    browser.get(f"{ui}/artifacts/artifact/{balance_id}")

    def charts_loaded(page) -> bool:
        images = page.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")
        return len(images) == 3 and all(page.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)

    wait.until(charts_loaded)
    browser.execute_script("document.querySelector('img[src^=\\'data:image\\']').scrollIntoView()")
    browser.save_screenshot(str(ARTIFACTS / "prefect-balance-report.png"))
