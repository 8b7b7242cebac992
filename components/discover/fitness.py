"""SLM fitness: how well a task cluster suits a small specialised model, as one score in [0, 1] with its parts.

Five parts, each in [0, 1] (higher = better for an SLM), following the paper's criteria for what to hand over:

- ``volume``: calls per day (cluster size over the whole log's time span). Savings and training data grow with
  volume; scored on a log scale, ``log1p(calls/day) / log1p(full_volume_calls_per_day)`` capped at 1. Without
  timestamps, the cluster's size relative to the largest cluster.
- ``homogeneity``: mean cosine similarity of the members' task embeddings to their centroid. One narrow task is
  what a small model learns well.
- ``structure``: share of answers that are tool calls or JSON text. Structured outputs are checkable and are where
  SLMs match LLMs.
- ``cost``: the cluster's share of the LLM spend, relative to the costliest cluster (1 for it). Where the money
  goes. Left out when no call has a cost.
- ``consistency``: how consistently the LLM itself answers the cluster: for tool-call answers the share with the
  cluster's most common call shape (function names and argument keys); for text answers the mean TF-IDF cosine of
  each answer to the cluster's mean answer. An LLM that answers alike is a teacher an SLM can imitate.

``fitness`` is the weighted mean of the parts that are defined (weights in params). A cluster is a conversion
*candidate* when it passes every threshold of params (size, fitness and per-part minima) and is one task: a cluster
whose answers call several functions, none of them in at least ``min_task_share`` of its calls, is a mixed bag
(``task_share``: by the task key of the second level, :mod:`components.discover.task_keys`) and no candidate
whatever its size or score.
The reasons a cluster fails are listed so nobody has to guess.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
from pydantic import field_validator

from components.core.config import StepConfig
from components.core.schema import CallRecord

PARTS = ("volume", "homogeneity", "structure", "cost", "consistency")


class FitnessSettings(StepConfig):
    weights: dict[str, float] = {"volume": 0.25, "homogeneity": 0.2, "structure": 0.2, "cost": 0.15, "consistency": 0.2}
    full_volume_calls_per_day: float = 1000.0
    min_fitness: float = 0.4
    # Per-part minima (a part left out, e.g. cost without costs, is not checked).
    min_parts: dict[str, float] = {"homogeneity": 0.4, "structure": 0.0, "consistency": 0.0}
    # The most common answer (called function, or text) must hold this share of a cluster: else a mixed bag.
    min_task_share: float = 0.8

    @field_validator("weights", "min_parts")
    @classmethod
    def _known_parts(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown fitness part(s) {sorted(unknown)}; the parts are {list(PARTS)}")
        return value


def log_span_days(records: list[CallRecord]) -> float | None:
    """Days between the first and the last call (at least one day), or None when calls carry no timestamps."""
    stamps = [r.timestamp for r in records if r.timestamp is not None]
    if len(stamps) < 2:
        return None
    return max((max(stamps) - min(stamps)).total_seconds() / 86400.0, 1.0)


def _call_shape(record: CallRecord) -> str:
    if record.response.tool_calls:
        calls = []
        for call in record.response.tool_calls:
            try:
                keys = sorted(call.parsed_arguments())
            except ValueError:
                keys = ["<invalid>"]
            calls.append(f"{call.name}({','.join(keys)})")
        return ";".join(sorted(calls))
    return "text"


def is_structured(record: CallRecord) -> bool:
    """A tool call, or a text answer that is a JSON object or array."""
    if record.response.tool_calls:
        return True
    content = (record.response.content or "").strip()
    if not content.startswith(("{", "[")):
        return False
    try:
        return isinstance(json.loads(content), (dict, list))
    except ValueError:
        return False


def answer_consistency(members: list[CallRecord]) -> float:
    tool_members = [r for r in members if r.response.tool_calls]
    text_members = [r.response.content or "" for r in members if not r.response.tool_calls]
    score = 0.0
    if tool_members:
        shapes = Counter(_call_shape(r) for r in tool_members)
        score += len(tool_members) * shapes.most_common(1)[0][1] / len(tool_members)
    if text_members:
        score += len(text_members) * _text_similarity(text_members)
    return score / len(members)


def _text_similarity(texts: list[str]) -> float:
    """Mean cosine of each text's TF-IDF vector to the mean vector (1 = all alike); 1 for a single text."""
    if len(texts) < 2:
        return 1.0
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        matrix = TfidfVectorizer().fit_transform(texts)
    except ValueError:  # no words at all (empty answers): alike
        return 1.0
    centroid = np.asarray(matrix.mean(axis=0)).ravel()
    norm = float(np.linalg.norm(centroid))
    if norm == 0.0:
        return 0.0
    return float(np.mean(matrix @ (centroid / norm)))


def score_clusters(
    clusters: list[dict[str, Any]],
    member_records: dict[int, list[CallRecord]],
    span_days: float | None,
    settings: FitnessSettings,
    min_size: int,
) -> None:
    """Add ``calls_per_day``, ``structured_output_share``, ``cost_share``, ``answer_consistency``, ``fitness``,
    ``fitness_parts``, ``candidate`` and ``candidate_failures`` to each cluster dict (which must already hold
    ``cluster_id``, ``size``, ``homogeneity`` and ``llm_cost_usd``)."""
    total_cost = sum(c["llm_cost_usd"] or 0.0 for c in clusters)
    largest = max((c["size"] for c in clusters), default=1)
    cost_shares = {c["cluster_id"]: (c["llm_cost_usd"] or 0.0) / total_cost if total_cost else None for c in clusters}
    top_cost_share = max((s for s in cost_shares.values() if s is not None), default=0.0)
    for cluster in clusters:
        members = member_records[cluster["cluster_id"]]
        calls_per_day = cluster["size"] / span_days if span_days else None
        cost_share = cost_shares[cluster["cluster_id"]]
        cluster["calls_per_day"] = None if calls_per_day is None else round(calls_per_day, 3)
        cluster["structured_output_share"] = round(sum(map(is_structured, members)) / len(members), 4)
        cluster["cost_share"] = None if cost_share is None else round(cost_share, 4)
        cluster["answer_consistency"] = round(answer_consistency(members), 4)
        parts = {
            "volume": (
                min(1.0, math.log1p(calls_per_day) / math.log1p(settings.full_volume_calls_per_day))
                if calls_per_day is not None
                else cluster["size"] / largest
            ),
            "homogeneity": min(1.0, max(0.0, cluster["homogeneity"])),
            "structure": cluster["structured_output_share"],
            "cost": cost_share / top_cost_share if cost_share is not None and top_cost_share else None,
            "consistency": cluster["answer_consistency"],
        }
        defined = {name: value for name, value in parts.items() if value is not None}
        weight = sum(settings.weights.get(name, 0.0) for name in defined)
        fitness = (
            sum(settings.weights.get(name, 0.0) * value for name, value in defined.items()) / weight if weight else 0.0
        )
        failures = []
        if cluster["size"] < min_size:
            failures.append(f"size {cluster['size']} < {min_size}")
        if fitness < settings.min_fitness:
            failures.append(f"fitness {fitness:.2f} < {settings.min_fitness}")
        for name, minimum in settings.min_parts.items():
            if name in defined and defined[name] < minimum:
                failures.append(f"{name} {defined[name]:.2f} < {minimum}")
        # task_share: the mix by the task key of the second level used (the called function, unless S3 fell back
        # to a coarser split; see task_keys.TaskSettings); clusters written before it carry only the function's.
        share = cluster.get("task_share", cluster.get("dominant_task_share"))
        if share is not None and share < settings.min_task_share:
            failures.append(
                f"mixed bag: {cluster['distinct_tasks']} different answers (called functions or text), the most "
                f"common ({cluster['dominant_task']}) in {share:.0%} of the calls < {settings.min_task_share:.0%}"
            )
        cluster["fitness"] = round(fitness, 4)
        cluster["fitness_parts"] = {name: None if value is None else round(value, 4) for name, value in parts.items()}
        cluster["candidate"] = not failures
        cluster["candidate_failures"] = failures


def mark_for_conversion(clusters: list[dict[str, Any]], max_clusters: int | None, decision_size: int = 0) -> None:
    """``convert`` = one of the ``max_clusters`` fittest candidates (None: every candidate; ties: the larger, then
    the lower id), those with at least ``decision_size`` calls first: a smaller one cannot hold out enough calls for
    a parity decision and keep enough to train on, so its SLM could never be promoted (``decidable`` records which).
    ``conversion_rank`` (1 = first) is the order S4 and S5 take them in, so a time budget cuts the least fit."""
    for cluster in clusters:
        cluster["decidable"] = cluster["size"] >= decision_size
    ranked = sorted(
        (c for c in clusters if c["candidate"]),
        key=lambda c: (not c["decidable"], -c["fitness"], -c["size"], c["cluster_id"]),
    )
    rank = {c["cluster_id"]: position for position, c in enumerate(ranked[:max_clusters], start=1)}
    for cluster in clusters:
        cluster["convert"] = cluster["cluster_id"] in rank
        cluster["conversion_rank"] = rank.get(cluster["cluster_id"])
