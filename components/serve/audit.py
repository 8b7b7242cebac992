"""The audit stream: a share of the calls a served SLM keeps also goes to the LLM, and the pair is scored.

A selective cluster's held-out figures say how it did before promotion; in production the LLM only sees the calls
it deferred, so nothing would notice the accepted calls drifting below parity. The router therefore audits a share
of the calls an ``on`` or ``selective`` cluster's SLM answers: the agent gets the SLM's answer at once, the proxy
asks the LLM the same request in the background (components/serve/proxy.py ``CallNote.audit``), and the stored call
holds the LLM's answer (``metadata.origin`` ``audited``, a reference the refresh can train and calibrate on) with
``metadata.route.audit`` ``match`` or ``miss``: the SLM's answer scored against the LLM's (full-call agreement,
components/serve/router.py :func:`agreement`, what S6's calibrator predicts).

Which calls: per cluster and UTC day the first ``audit_min_per_day`` kept calls (so a quiet cluster still gets
audited), then a seeded ``audit_share`` of the rest. Each cluster's audited calls since the router started are
tallied; once they fail the gate's rule (components/evaluate/demotion.py) the router demotes the cluster to
``shadow`` and writes the demotion to the promotions log.

Framework-free.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from components.core.schema import ChatMessage
from components.evaluate.demotion import AuditedFigures, demotion_line, demotion_reason
from components.evaluate.promotion import PromotionPolicy
from components.evaluate.promotion_log import append_promotion_events
from components.serve.router import agreement

logger = logging.getLogger(__name__)


class AuditSampler:
    """Decides which kept calls are audited: the day's first ``min_per_day`` per cluster, then ``share`` of them."""

    def __init__(self, share: float, min_per_day: int, seed: int = 0) -> None:
        self.share, self.min_per_day = share, min_per_day
        self._draw = random.Random(seed)
        self._day: date | None = None
        self._today: Counter[int] = Counter()
        self._lock = threading.Lock()

    def pick(self, cluster_id: int, moment: datetime | None = None) -> bool:
        day = (moment or datetime.now(UTC)).date()
        with self._lock:
            if day != self._day:
                self._day, self._today = day, Counter()
            # The draw is taken for every call, so the seeded sequence does not depend on the minimum's calls.
            drawn = self._draw.random() < self.share
            if self._today[cluster_id] < self.min_per_day or drawn:
                self._today[cluster_id] += 1
                return True
            return False


class AuditTally:
    """Each cluster's audited calls and hits since the router started (thread-safe: scored in the proxy's writer
    threads)."""

    def __init__(self) -> None:
        self._calls: Counter[int] = Counter()
        self._hits: Counter[int] = Counter()
        self._lock = threading.Lock()

    def add(self, cluster_id: int, hit: bool) -> AuditedFigures:
        with self._lock:
            self._calls[cluster_id] += 1
            self._hits[cluster_id] += int(hit)
            return AuditedFigures(self._calls[cluster_id], self._hits[cluster_id])

    def figures(self, cluster_id: int) -> AuditedFigures:
        with self._lock:
            return AuditedFigures(self._calls[cluster_id], self._hits[cluster_id])

    def reset(self, cluster_id: int) -> None:
        """After a demotion: a cluster routed again starts a fresh tally."""
        with self._lock:
            self._calls.pop(cluster_id, None)
            self._hits.pop(cluster_id, None)


class AuditStream:
    """The router's audits: which kept calls to audit (``sampler``), each audited pair scored into the cluster's
    tally, and the demotion when the tally fails the gate's rule: ``demote(cluster_id)`` moves the router's route
    (returning the mode it left, or None when there was nothing to demote) and the demotion is logged."""

    def __init__(
        self,
        sampler: AuditSampler,
        policy: PromotionPolicy,
        promotions_log: Path,
        demote: Callable[[int], str | None],
    ) -> None:
        self.sampler, self.policy, self.promotions_log, self._demote = sampler, policy, promotions_log, demote
        self.tally = AuditTally()

    def score(self, cluster_id: int, slm_answer: ChatMessage, llm_answer: ChatMessage, fields: dict[str, Any]) -> None:
        """An audited call's pair, once the LLM answered (in the proxy's writer thread): the stored call holds the
        LLM's answer (origin ``audited``) and the verdict; a cluster whose audited calls fail the rule is demoted."""
        hit = agreement(slm_answer, llm_answer)
        fields["origin"] = "audited"
        fields["route"]["audit"] = "match" if hit else "miss"
        self.demote_if_below_parity(cluster_id, self.tally.add(cluster_id, hit))

    def demote_if_below_parity(self, cluster_id: int, audited: AuditedFigures) -> bool:
        """Demote the cluster to ``shadow`` and log it with its figures when its audited calls fail the gate's
        rule; True when it was demoted now."""
        reason = demotion_reason(audited, self.policy)
        if reason is None:
            return False
        from_mode = self._demote(cluster_id)
        if from_mode is None:
            return False
        self.tally.reset(cluster_id)
        logger.warning("router: cluster %s demoted from %s to shadow: %s", cluster_id, from_mode, reason)
        try:
            append_promotion_events(self.promotions_log, [demotion_line(cluster_id, from_mode, audited, reason)])
        except OSError as error:  # the demotion holds in this router even when the log cannot be written
            logger.error("router: could not log the demotion of cluster %s: %s", cluster_id, type(error).__name__)
        return True
