"""Data-parallel map over record partitions for the steps that treat records independently (S2 anonymization,
S3 embedding), and the task runner that provides the workers.

With ``execution.task_runner: dask`` the flow submits those steps to Prefect's ``DaskTaskRunner`` (prefect-dask);
inside such a task, :func:`map_partitions` spreads the partitions over the same Dask cluster. Anywhere else
(the in-process default, the DVC stages, unit tests) it runs the partitions one after the other in-process, so
results never depend on the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from pydantic import Field

from components.core.config import StepConfig

T = TypeVar("T")
R = TypeVar("R")


class ExecutionConfig(StepConfig):
    """params.yaml `execution`: where the data-parallel steps run."""

    task_runner: Literal["thread", "dask"] = "thread"
    # Dask scheduler address (tcp://host:8786); None starts a local cluster for the flow run.
    dask_address: str | None = None
    dask_workers: int = Field(default=2, ge=1)  # local cluster only
    dask_threads_per_worker: int = Field(default=1, ge=1)
    # Local cluster: worker processes (true parallelism for Python-heavy steps) or threads in the flow run's
    # process (no per-worker start-up and model loading; enough when the work releases the GIL).
    dask_processes: bool = True
    partitions: int = Field(default=1, ge=1)  # record partitions per data-parallel step


def dask_task_runner(cfg: ExecutionConfig):
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.dask_workers,
            "threads_per_worker": cfg.dask_threads_per_worker,
            "processes": cfg.dask_processes,
            "dashboard_address": None,
        }
    )


def split(items: Sequence[T], partitions: int) -> list[list[T]]:
    """Contiguous, order-preserving, near-equal partitions (none empty)."""
    count = max(1, min(partitions, len(items)))
    size, extra = divmod(len(items), count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (index < extra))
    return [list(items[start:end]) for start, end in zip(bounds, bounds[1:])]


def on_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def map_partitions(function: Callable[[list[T]], R], items: Sequence[T], partitions: int) -> list[R]:
    """``function`` applied to each partition of ``items``, results in partition order.

    On a Dask worker the partitions run as Dask futures on the cluster (``worker_client`` lets the calling task
    wait without holding a worker slot); otherwise they run here, one after the other."""
    chunks = split(items, partitions)
    if len(chunks) <= 1 or not on_dask_worker():
        return [function(chunk) for chunk in chunks]
    from distributed import worker_client

    with worker_client() as client:
        futures = client.map(function, chunks, pure=False)
        return client.gather(futures)
