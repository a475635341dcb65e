"""Task runners by configuration: threads (default), processes, Dask or Ray.

Dask and Ray spread a build over an existing cluster (`runner.address`) or start a local one with
`runner.workers` workers. The storage folder must be visible to every worker (a shared disk).

Each worker caps its torch/OpenMP/BLAS threads at its share of the cores
(`pipeline.build.plan.worker_threads`).
"""

from __future__ import annotations

from pipeline.build.config import BuildConfigError, Runner


def make_task_runner(runner: Runner):
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runner.workers)
    if runner.kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=runner.workers)
    if runner.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:
            raise BuildConfigError("runner kind 'dask' needs prefect-dask (pip install prefect-dask)") from error
        if runner.address:
            return DaskTaskRunner(address=runner.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": runner.workers, "threads_per_worker": 1, "processes": True})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as error:
        raise BuildConfigError("runner kind 'ray' needs prefect-ray (pip install 'ovrsis[ray]')") from error
    return RayTaskRunner(address=runner.address) if runner.address else RayTaskRunner()
