"""One worker thread that answers queued jobs in batches: the oldest job and the other queued jobs with the same key
(up to ``max_batch_size``) go to ``run_batch`` together, so a burst of calls to one model costs one generation.

Control jobs (e.g. a hot reload of adapters) run on the same thread, alone and in queue order: the SLM pool is not
thread-safe, so everything that touches it happens here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# (key shared by the batch, the jobs' payloads in queue order) -> one result per payload, in the same order.
RunBatch = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class _Job:
    key: Hashable
    payload: Any
    answer: Future
    control: Callable[[], Any] | None = None


class BatchWorker:
    def __init__(self, run_batch: RunBatch, max_batch_size: int, max_queued: int, name: str = "batch-worker") -> None:
        self._run_batch = run_batch
        self.max_batch_size, self.max_queued = max_batch_size, max_queued
        self._jobs: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self.queued = 0  # submitted payloads not answered yet (queued or running)
        self.batch_sizes: list[int] = []  # of each batch run, for tests and metrics
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, payload: Any) -> Future | None:
        """Queues a payload; None when ``max_queued`` are already waiting or running (the caller answers 'busy')."""
        with self._changed:
            if self.queued >= self.max_queued or self._closed:
                return None
            self.queued += 1
            job = _Job(key, payload, Future())
            self._jobs.append(job)
            self._changed.notify()
        return job.answer

    def call(self, action: Callable[[], Any]) -> Future:
        """Runs ``action`` on the worker thread after the jobs queued before it; its result or error in the future."""
        job = _Job(None, None, Future(), control=action)
        with self._changed:
            if self._closed:
                job.answer.cancel()
                return job.answer
            self._jobs.append(job)
            self._changed.notify()
        return job.answer

    def _next_batch(self) -> list[_Job]:
        with self._changed:
            while not self._jobs and not self._closed:
                self._changed.wait()
            if not self._jobs:
                return []
            batch, others = [self._jobs.popleft()], deque()
            if batch[0].control is None:
                while self._jobs and len(batch) < self.max_batch_size:
                    job = self._jobs.popleft()
                    same = job.control is None and job.key == batch[0].key
                    (batch if same else others).append(job)
            others.extend(self._jobs)
            self._jobs = others
            return batch

    def _serve(self) -> None:
        while batch := self._next_batch():
            if batch[0].control is not None:
                self._run_control(batch[0])
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = self._run_batch(batch[0].key, [job.payload for job in batch])
                for job, result in zip(batch, results, strict=True):
                    job.answer.set_result(result)
            except Exception as error:  # noqa: BLE001 - the thread must survive any one batch
                logger.exception("%s: a batch failed", self._thread.name)
                for job in batch:
                    if not job.answer.done():
                        job.answer.set_exception(error)
            with self._changed:
                self.queued -= len(batch)

    @staticmethod
    def _run_control(job: _Job) -> None:
        try:
            job.answer.set_result(job.control())
        except Exception as error:  # noqa: BLE001 - reported through the future
            job.answer.set_exception(error)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            for job in self._jobs:
                job.answer.cancel()
            self._jobs.clear()
            self._changed.notify_all()
