"""Real servers for the tests, started as a user starts them and stopped by PID: Label Studio by
`ovrsis audit server` from a working directory other than the checkout (so `.venv-ls` is found beside
the project, not in the working directory), the ML backend beside it when a module asks for one. The
`label_studio` fixture (conftest.py) starts them once per module."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from audit.server import BACKEND_HOST, LS_VENV_ENV, LocalServer, start_backend, stop_server
from flows.sample_build import ovrsis

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the admin's API token
USERNAME = "admin@example.com"
PASSWORD = "audit-test-pw"
BACKEND_SECRET = "test-backend-secret-0123456789abc"  # the ML backend's shared secret (Label Studio sends it)
REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO = REPO / ".venv-ls" / "bin" / "label-studio"


def free_ports(*hosts: str) -> list[int]:
    """A free port on each of `hosts`, all distinct: every probe stays bound until all are chosen, so
    two servers starting side by side can never be handed the same port."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in hosts]
        for probe, host in zip(probes, hosts, strict=True):
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(host)[0]


@dataclass
class LabelStudio:
    """A Label Studio serving `root` from the data folder `data` on 127.0.0.1:`port`; `pid` is 0 until it
    has started. `backend`: the ML backend started beside it, if any."""

    url: str
    pid: int
    data: Path
    root: Path
    port: int
    cwd: Path
    backend: LocalServer | None = None

    def start(self) -> None:
        """`ovrsis audit server` (again, after a stop: the same database, served root and port), run from
        `cwd` without OVRSIS_LABEL_STUDIO_VENV; its PID is read from the data folder."""
        env = {k: v for k, v in os.environ.items() if k != LS_VENV_ENV} | {
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_USERNAME": USERNAME,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
        }
        command = ovrsis(
            "audit", "server", "--root", str(self.root), "--data", str(self.data), "--port", str(self.port)
        )
        started = subprocess.run(command, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stderr[-3000:]
        self.pid = int((self.data / "label-studio.pid").read_text())


@contextmanager
def running(data: Path, root: Path, cwd: Path, backend_models: str | None = None) -> Iterator[LabelStudio]:
    """Label Studio serving `root`, and with `backend_models` the ML backend too (serving `root`, records
    from `root`, those models, `BACKEND_SECRET`), both started at once: each mostly waits on its own
    imports. What started is stopped by PID at the end, even when the other failed to start."""
    ports = free_ports("127.0.0.1", *([BACKEND_HOST] if backend_models else []))
    label_studio = LabelStudio(f"http://127.0.0.1:{ports[0]}", 0, data, root, ports[0], cwd)
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(label_studio.start)]
        if backend_models:
            starting.append(pool.submit(start_backend, data, root, root, backend_models, BACKEND_SECRET, port=ports[1]))
        wait(starting)
    try:
        started = [future.result() for future in starting]  # raises what a failed start raised
        label_studio.backend = started[1] if backend_models else None
        yield label_studio
    finally:
        if label_studio.pid:  # the PID it runs under now (a test may have stopped and restarted it)
            stop_server(label_studio.pid)
        if backend_models and starting[1].exception() is None:
            stop_server(starting[1].result().pid)
