"""Thread budgets: how many threads a build worker lets torch, OpenMP and BLAS start.

Each numeric library starts one thread per core it sees, in every process and for every calling
thread, whatever else runs there. A build runs several batches at once (the thread runner's workers,
or one process per worker) and its Python threads keep one core busy while they hold the GIL, so the
defaults put two to three busy threads on each core: on a quiet 2-core machine that cost little, but
beside one other busy process a 1,000-tile build took 159 s instead of 79 s, against 68 s with
OMP_NUM_THREADS=1 (issue 32). Spinning OpenMP threads that wait for a core someone else holds are
what collapses it. So a worker gives the libraries its share of the cores it may run on
(`os.sched_getaffinity`, which a container's CPU set or `taskset` narrows), less the core its Python
thread uses, and never fewer than one.
"""

from __future__ import annotations

import os
import sys

# read by OpenMP (torch's intra-op pool), MKL, OpenBLAS, Accelerate and numexpr when they start
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

_applied: int | None = None  # the budget this process last applied (a batch task applies it once per process)


def owned_cores() -> int:
    """The cores this process may run on: its affinity set where the OS has one, else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity call
        return os.cpu_count() or 1


def budget(cores: int, concurrent: int = 1) -> int:
    """Library threads for each of `concurrent` tasks that share `cores` in one process: one core is
    left to the process's Python threads (one holds the GIL at a time), the rest split between the
    tasks; at least one."""
    return max(1, (cores - 1) // max(1, concurrent))


def worker_budget(kind: str, workers: int, remote: bool = False, cores: int | None = None) -> int:
    """The budget of one build worker under a task runner (`pipeline.build.config.Runner`: `kind`, `workers`,
    `remote` when it names an existing cluster). Threads: the workers share this process's cores.
    Processes and local Dask/Ray clusters: each worker process owns its share of the cores. A remote
    cluster's worker owns the cores it sees (one task at a time per worker process is assumed)."""
    cores = owned_cores() if cores is None else cores
    if kind == "threads":
        return budget(cores, workers)
    if remote:
        return budget(cores)
    return budget(max(1, cores // max(1, workers)))


def apply(threads: int) -> int:
    """Cap the process's library threads at `threads`: torch's intra-op pool now (if torch is loaded),
    and the environment that libraries loaded later, and worker processes started later, read. An
    environment value already lower (a user's choice) is kept. Returns the budget applied."""
    global _applied
    for name in THREAD_VARIABLES:
        given = os.environ.get(name, "")
        lower = given.isdigit() and 0 < int(given) < threads
        os.environ[name] = given if lower else str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        given = os.environ["OMP_NUM_THREADS"]
        torch.set_num_threads(int(given))
    _applied = threads
    return threads


def apply_once(threads: int) -> None:
    """`apply`, unless this process already applied the same budget (called by every batch task)."""
    if _applied != threads:
        apply(threads)
