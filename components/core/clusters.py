"""What every step calls a cluster: the outlier id (calls that stay with the LLM), a cluster's registered name, and
one row of S3's cluster table (``clusters.json``), which S3 writes and S4, the refresh and the reports read.

The table is a typed model rather than a dict so that a misspelt or missing field fails where the table is read,
naming the file and the field, instead of as a ``KeyError`` steps later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from components.core.schema import OutputKind

OUTLIER = -1  # S3's label for a call in no cluster: the LLM answers it


def registered_name(prefix: str, cluster_id: int) -> str:
    """The MLflow registered model of a cluster's SLM (its versions carry the champion/challenger aliases)."""
    return f"{prefix}-cluster-{cluster_id}"


class ClusterExample(BaseModel):
    """A member call as the report shows it: the (anonymized) request and a short form of the answer."""

    model_config = ConfigDict(extra="forbid")

    record_id: str
    request: str
    answer: str  # the tool calls as ``name(arguments)`` joined by "; ", or the text answer


class ClusterSummary(BaseModel):
    """One row of S3's cluster table: what the cluster is, how fit it is for an SLM, and whether S3 converts it.

    S3 describes the cluster (:func:`components.discover.discovery.discover`), then scores it
    (:func:`components.discover.fitness.score_clusters`) and ranks it (``mark_for_conversion``). Fields the scoring
    adds default to "not scored" so that tables of older runs and small test tables still read.
    """

    model_config = ConfigDict(extra="forbid")

    cluster_id: int
    label: str  # c-TF-IDF terms plus the dominant tool, for people
    size: int  # member calls
    top_terms: list[str] = []  # the cluster's c-TF-IDF terms, best first
    dominant_tools: list[str] = []  # the most called tools (else the most offered), at most three
    output_kind: OutputKind = "text"  # "tool_call" when at least half of the answers call a tool
    tool_call_share: float = 0.0
    homogeneity: float = 0.0  # mean cosine of the members' task embeddings to their centroid
    dominant_task: str | None = None  # the most common called function ("text" for text answers)
    dominant_task_share: float | None = None  # ... and its share of the calls
    task_share: float | None = None  # the same share by the second level's task key (task_keys); None: older table
    distinct_tasks: int = 0  # how many different called functions (or text) the members answer with
    pinned: str | None = None  # the name of the user's pinned task rule that made this cluster, if one did
    llm_cost_usd: float | None = None  # what the LLM calls cost in all; None when no call has a cost
    convert: bool = False  # one of the clusters S4-S6 convert (mark_for_conversion)
    conversion_rank: int | None = None  # the order S4 and S5 take the converted ones in, 1 first
    representative_record_ids: list[str] = []  # the members closest to the centroid
    examples: list[ClusterExample] = []  # those members, as the report shows them
    calls_per_day: float | None = None  # None without timestamps
    structured_output_share: float = 0.0  # answers that are tool calls or JSON text
    cost_share: float | None = None  # share of the LLM spend; None when no call has a cost
    answer_consistency: float = 0.0  # how alike the LLM answers the members (fitness, "consistency")
    fitness: float = 0.0  # the weighted mean of the defined parts, in [0, 1]
    fitness_parts: dict[str, float | None] = {}  # each part of the fitness; None: left out (e.g. cost without costs)
    candidate: bool = False  # passes every conversion threshold
    candidate_failures: list[str] = []  # why not, one reason per threshold missed
    decidable: bool = True  # large enough to hold out the calls a parity decision needs and train on the rest


_TABLE = TypeAdapter(list[ClusterSummary])


def read_cluster_table(path: Path) -> list[ClusterSummary]:
    """The rows of a ``clusters.json``; a row that does not fit :class:`ClusterSummary` is an error naming the file,
    the row and the field."""
    path = Path(path)
    try:
        return _TABLE.validate_python(json.loads(path.read_text()))
    except ValidationError as error:
        problems = "; ".join(
            f"row {'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in error.errors()
        )
        raise ValueError(
            f"{path} is not a cluster table (components.core.clusters.ClusterSummary): {problems}"
        ) from None


def cluster_table_json(clusters: list[ClusterSummary]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts, every field written (a ``None`` too), in the model's field order."""
    return [cluster.model_dump(mode="json") for cluster in clusters]
