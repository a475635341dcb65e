"""Batches: fixed-size batches from any iterable, and a bounded window of batches in flight.

`itertools.batched` arrives only in Python 3.12. `in_order` is how both `ovrsis annotate` and the
build flow overlap batches (one batch's CPU stages beside another's model stages) without holding
more than `window` of them: unbounded futures would hold every batch's pixels and results at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

# Two batch sizes, on purpose. `ovrsis annotate` runs in one process: its batch is what one model call
# takes, small enough to overlap reading, models and writing. A build's batch is also one Prefect task
# run (~30 ms of orchestration each), so it is larger to keep that cost small beside the stages.
MODEL_BATCH = 8  # `ovrsis annotate --batch-size` and AnnotateConfig.batch_size
TASK_BATCH = 32  # the build YAML's `batch_size`

T = TypeVar("T")
R = TypeVar("R")


class Pending(Protocol[R]):
    """A submitted unit of work: a concurrent.futures.Future or a Prefect future."""

    def result(self) -> R: ...


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def in_order(items: Iterable[T], submit: Callable[[T], Pending[R]], window: int) -> Iterator[R]:
    """Submit items as earlier ones finish, at most `window` in flight; yield results in input order.

    `items` is consumed lazily, so a generator of batches is read (and its tiles ingested) only as
    far ahead as the window. The first failure is raised when its turn comes."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    flying: deque[Pending[R]] = deque()
    for item in items:
        flying.append(submit(item))
        if len(flying) >= window:
            yield flying.popleft().result()
    while flying:
        yield flying.popleft().result()
