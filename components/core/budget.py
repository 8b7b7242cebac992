"""Which conversion clusters a step works on, in what order, and when a wall-clock budget says stop.

S3 ranks its conversion clusters (``conversion_rank``: decidable first, then the fittest); S4 and S5 take them in
that order and, with a time budget, start no cluster once it is spent, so the budget cuts the least fit ones and
each cluster left says why."""

from __future__ import annotations

import time
from collections.abc import Callable

from components.core.clusters import ClusterSummary


def conversion_order(clusters: list[ClusterSummary]) -> list[ClusterSummary]:
    """The clusters S3 marked ``convert``, by ``conversion_rank`` (clusters of older runs, without one, by id)."""
    chosen = [c for c in clusters if c.convert]
    return sorted(chosen, key=lambda c: (c.conversion_rank is None, c.conversion_rank or 0, c.cluster_id))


class TimeBudget:
    """Minutes a step may spend from its creation; ``None`` never runs out."""

    def __init__(
        self, minutes: float | None, step: str, setting: str, clock: Callable[[], float] | None = None
    ) -> None:
        self.minutes, self.step, self.setting = minutes, step, setting
        self.clock = clock or time.monotonic
        self.started = self.clock()
        self.left: list[int] = []  # cluster ids not started because the budget was spent

    @property
    def deadline(self) -> float | None:
        """When the budget runs out, on its clock (None: never): a long job started in time stops there."""
        return None if self.minutes is None else self.started + self.minutes * 60

    def spent(self) -> bool:
        return self.minutes is not None and self.clock() - self.started >= self.minutes * 60

    def leave(self, cluster_id: int) -> None:
        if cluster_id not in self.left:
            self.left.append(cluster_id)

    @property
    def reason(self) -> str:
        return (
            f"{self.step} time budget ({self.minutes:g} min) spent before this cluster: left for a later run "
            f"(raise {self.setting} to convert it)"
        )
