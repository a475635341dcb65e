"""Start and stop a local Label Studio server from its own virtual environment (`.venv-ls`).

Label Studio lives in a venv of its own because installing it beside Prefect downgrades Prefect's
dependencies (see the README). The recipe: SQLite data folder, admin user and API token from the
environment, legacy tokens enabled on the first start, version check off, loopback only,
local-files serving rooted at the dataset folder, ML backends on loopback allowed (Label Studio
blocks local addresses by default, and `ovrsis audit backend` runs beside it).

The ML backend is started the same way: detached, its PID in the data folder, stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from audit.settings import AuditError

DEFAULT_LS_VENV = Path(".venv-ls")


@dataclass
class LocalServer:
    url: str
    pid: int
    log: Path


def label_studio_binary(venv: Path = DEFAULT_LS_VENV) -> Path:
    binary = Path(os.environ.get("OVRSIS_LABEL_STUDIO_VENV", venv)) / "bin" / "label-studio"
    if not binary.is_file():
        raise AuditError(f"{binary} not found: `make setup` creates the Label Studio venv .venv-ls")
    return binary


def start_server(
    data_dir: Path,
    document_root: Path,
    token: str,
    username: str,
    password: str,
    port: int = 8089,
    venv: Path = DEFAULT_LS_VENV,
    timeout: float = 180.0,
) -> LocalServer:
    """Start Label Studio on 127.0.0.1:`port` and wait until it answers /health."""
    if len(token) != 40 or any(c not in "0123456789abcdef" for c in token.lower()):
        raise AuditError("LABEL_STUDIO_USER_TOKEN must be 40 hexadecimal characters")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "label-studio.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    for bare in ("USERNAME", "PASSWORD", "PORT", "HOST"):  # Label Studio reads these unprefixed too
        env.pop(bare, None)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir.resolve()),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root.resolve()),
        COLLECT_ANALYTICS="false",
        # the ML backend (`ovrsis audit backend`) and its /webhook run on loopback beside it: Label Studio
        # refuses local addresses for both unless told (the server itself listens on loopback only)
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
    )
    command = [
        str(label_studio_binary(venv)),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True
    )
    (data_dir / "label-studio.pid").write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AuditError(f"Label Studio exited with status {process.returncode}; see {log}")
        if _healthy(url):
            return LocalServer(url=url, pid=process.pid, log=log)
        time.sleep(0.5)
    stop_server(process.pid)
    raise AuditError(f"Label Studio did not answer on {url} within {timeout:.0f} s (is the port taken?); see {log}")


def start_backend(
    data_dir: Path,
    root: Path,
    records: Path | None,
    models: str,
    piseg: Path | None = None,
    port: int = 9090,
    warm: bool = False,
    timeout: float = 120.0,
) -> LocalServer:
    """Start `ovrsis audit backend` detached on 127.0.0.1:`port` (PID in DATA/ml-backend.pid) and wait for /health."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "ml-backend.log"
    command = [
        sys.executable,
        "-m",
        "audit.cli",
        "backend",
        "--root",
        str(root.resolve()),
        "--models",
        models,
        "--port",
        str(port),
    ]
    command += ["--records", str(records.resolve())] if records else []
    command += ["--piseg", str(piseg.resolve())] if piseg else []
    command += ["--warm"] if warm else []
    process = subprocess.Popen(
        command,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    (data_dir / "ml-backend.pid").write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AuditError(f"the ML backend exited with status {process.returncode}; see {log}")
        if _healthy(url):
            return LocalServer(url=url, pid=process.pid, log=log)
        time.sleep(0.3)
    stop_server(process.pid)
    raise AuditError(f"the ML backend did not answer on {url} within {timeout:.0f} s (is the port taken?); see {log}")


def stop_server(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
