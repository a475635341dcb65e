"""Batch progress of a running build: the `ovrsis build` progress bar, and tiles done / total / rate /
ETA on the Prefect run the user started (a progress artifact and a log line now and then).

A module of its own (not a global of flows.build) so that nothing unpicklable is reachable from the
task functions that Dask and Ray workers receive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_listeners: list[Callable[[int, int], None]] = []


def listen(callback: Callable[[int, int], None]) -> None:
    _listeners.append(callback)


@contextmanager
def listening(callback: Callable[[int, int], None]) -> Iterator[None]:
    """`callback` hears the progress while the block runs, and only then: a served deployment runs many
    builds in one process, and a finished run's listener must not hear the next one."""
    _listeners.append(callback)
    try:
        yield
    finally:
        _listeners.remove(callback)


def report(done: int, total: int) -> None:
    for callback in _listeners:
        callback(done, total)


def progress_line(done: int, total: int, seconds: float) -> str:
    """`120/400 tiles (30 %), 5.2 tiles/s, ETA 54 s` (no rate or ETA before the first tile is done)."""
    share = done / total if total else 1.0
    line = f"{done}/{total} tiles ({share:.0%})"
    if done and seconds > 0:
        rate = done / seconds
        line += f", {rate:.1f} tiles/s, ETA {_duration((total - done) / rate)}"
    return line


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class RunProgress:
    """Progress on the flow run the user started: a Prefect progress artifact (the bar on the run's
    page) updated at most every `every_s` seconds, and the same numbers as a log line, so a served run
    (`prefect deployment run --watch`, the run's Logs tab) shows where it is, not only its end."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self.started = self.last = time.monotonic()
        self.artifact = self._artifact(
            lambda: _prefect_artifacts().create_progress_artifact(
                0.0, key="build-progress", description="Tiles annotated, in percent"
            )
        )

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        if self.artifact is not None:
            share = 100.0 * done / total if total else 100.0
            artifact = self.artifact
            self.artifact = self._artifact(lambda: _prefect_artifacts().update_progress_artifact(artifact, share))
        self.logger.info("annotating: %s", progress_line(done, total, now - self.started))

    def _artifact(self, call: Callable[[], object]) -> object | None:
        """The artifact call's result; None, with one warning, where the API fails: a progress bar is
        never worth a build (the log lines go on)."""
        try:
            return call()
        except Exception as error:  # noqa: BLE001 (any API or network failure)
            self.logger.warning("progress artifact dropped: %s", error)
            return None


def _prefect_artifacts():
    import prefect.artifacts

    return prefect.artifacts
