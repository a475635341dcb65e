"""Thread budgets (pipeline/build/threads.py, issue 32): a build never asks torch, OpenMP and BLAS for more
threads than the cores its workers own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.build import threads
from pipeline.build.config import Runner
from pipeline.build.plan import worker_threads


def test_budget_leaves_a_core_to_python_and_splits_the_rest():
    assert threads.budget(16) == 15
    assert threads.budget(16, concurrent=3) == 5
    assert threads.budget(2) == 1 and threads.budget(1) == 1 and threads.budget(2, concurrent=4) == 1


@pytest.mark.parametrize(
    ("kind", "workers", "remote", "expected"),
    [
        ("threads", 2, False, 7),  # two batches at once in one process share its 16 cores
        ("processes", 4, False, 3),  # each process owns 4 cores
        ("dask", 16, False, 1),
        ("ray", 2, True, 15),  # a remote cluster's worker owns the cores it sees
    ],
)
def test_worker_budget_per_runner(kind, workers, remote, expected):
    assert threads.worker_budget(kind, workers, remote=remote, cores=16) == expected


def test_runner_budget_uses_the_cores_this_process_may_run_on():
    cores = threads.owned_cores()
    assert 1 <= cores <= (os.cpu_count() or cores)
    assert worker_threads(Runner(kind="threads", workers=1)) == max(1, cores - 1)


def test_apply_caps_torch_and_the_environment_a_child_inherits():
    """In a fresh process: torch's pool and the variables worker processes and later libraries read;
    a user's lower value is kept."""
    code = (
        "import os, torch; from pipeline.build import threads; threads.apply(3); "
        "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["3", "3", "2"]
