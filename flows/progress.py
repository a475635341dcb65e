"""Batch progress of a running build, for the `ovrsis build` progress bar.

A module of its own (not a global of flows.build) so that nothing unpicklable is reachable from the
task functions that Dask and Ray workers receive.
"""

from __future__ import annotations

from collections.abc import Callable

_listeners: list[Callable[[int, int], None]] = []


def listen(callback: Callable[[int, int], None]) -> None:
    _listeners.append(callback)


def report(done: int, total: int) -> None:
    for callback in _listeners:
        callback(done, total)
