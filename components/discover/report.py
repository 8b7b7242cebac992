"""S3's human-readable outputs: the cluster table, a 2-D map of the calls coloured by cluster, examples per cluster.

The map is a PCA projection of the task embeddings (cheap at any scale and the same on every run); the HTML page
embeds it, so the page is one self-contained file. Examples are the calls closest to each centroid, in the
anonymized form S2 wrote.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from components.core.clusters import ClusterSummary
from components.discover.clustering import OUTLIER

TABLE_COLUMNS = [
    "cluster_id",
    "label",
    "size",
    "fitness",
    "candidate",
    "convert",
    "calls_per_day",
    "homogeneity",
    "dominant_task",
    "dominant_task_share",
    "distinct_tasks",
    "pinned",
    "structured_output_share",
    "cost_share",
    "answer_consistency",
    "output_kind",
    "dominant_tools",
    "top_terms",
]
# Points drawn on the map at most: a scatter of 100k dots says no more than one of 5k and takes far longer.
MAP_MAX_POINTS = 5000


def write_cluster_map(
    embeddings: np.ndarray | None, labels: np.ndarray, clusters: list[ClusterSummary], path: Path, seed: int = 0
) -> Path | None:
    """A PNG of the calls in the first two principal components, one colour per cluster, outliers grey."""
    if embeddings is None or len(embeddings) < 2:
        return None
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    labels = np.asarray(labels)
    if len(labels) > MAP_MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), MAP_MAX_POINTS, replace=False))
        embeddings, labels = np.asarray(embeddings)[keep], labels[keep]
    points = PCA(n_components=2, random_state=0).fit_transform(np.asarray(embeddings, dtype=float))
    figure = Figure(figsize=(7, 5), dpi=100)
    axes = figure.add_subplot()
    outliers = labels == OUTLIER
    axes.scatter(points[outliers, 0], points[outliers, 1], s=8, c="lightgray", label="outliers (stay with the LLM)")
    for cluster in clusters:
        mask = labels == cluster.cluster_id
        marker = "*" if cluster.convert else "o"
        axes.scatter(
            points[mask, 0],
            points[mask, 1],
            s=14,
            marker=marker,
            label=f"#{cluster.cluster_id} {cluster.label}"[:40],
        )
    axes.set_title("Calls by task cluster (PCA of the task embeddings; * = to convert)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, not over it
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def write_cluster_report(
    clusters: list[ClusterSummary],
    n_calls: int,
    outlier_share: float,
    path: Path,
    map_png: Path | None = None,
    stats: dict[str, Any] | None = None,
) -> Path:
    """A self-contained HTML page: summary, cluster table, the map (embedded) and examples per cluster."""
    import base64

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"<th>{html.escape(name)}</th>" for name in TABLE_COLUMNS)
    rows = []
    for cluster in clusters:
        row = cluster.model_dump()
        cells = "".join(f"<td>{html.escape(_cell(row[name]))}</td>" for name in TABLE_COLUMNS)
        style = ' style="background:#e8f5e9"' if cluster.convert else ""
        rows.append(f"<tr{style}>{cells}</tr>")
    figure = ""
    if map_png is not None and Path(map_png).exists():
        image = base64.b64encode(Path(map_png).read_bytes()).decode("ascii")
        figure = f'<img alt="cluster map" src="data:image/png;base64,{image}">'
    examples = []
    for cluster in clusters:
        items = "".join(
            f"<li><code>{html.escape(e.record_id)}</code> {html.escape(e.request)} "
            f"&rarr; <i>{html.escape(e.answer)}</i></li>"
            for e in cluster.examples
        )
        failures = "; ".join(cluster.candidate_failures) or "passes every threshold"
        examples.append(
            f"<h3>#{cluster.cluster_id} {html.escape(cluster.label)}</h3>"
            f"<p>Candidate: {html.escape(failures)}</p><ul>{items}</ul>"
        )
    to_convert = sum(c.convert for c in clusters)
    extra = "".join(f" {html.escape(str(k))}: {html.escape(str(v))}." for k, v in (stats or {}).items())
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>llm2slm task clusters</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>Discovered tasks</h1>"
        f"<p>{n_calls} calls, {len(clusters)} clusters, {to_convert} marked for conversion "
        f"(green), outliers {outlier_share:.1%} (they stay with the LLM).{extra}</p>"
        f"<table><tr>{header}</tr>{''.join(rows)}</table>{figure}"
        f"<h2>Examples (closest to each cluster's centroid)</h2>{''.join(examples)}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path
