"""Grouping task embeddings: UMAP down to a few dimensions, then HDBSCAN (BERTopic's recipe), both pluggable.

HDBSCAN finds clusters of any shape and leaves points that belong nowhere as outliers (``-1``): those calls stay
with the LLM. UMAP first, because density-based clustering degrades in 384 dimensions. Both get the seed
explicitly; UMAP with a ``random_state`` runs single-threaded and gives the same layout on every run.

UMAP's first ``fit`` in a process pays ~30-45 s of numba compilation: tests inject a cheap reducer (PCA) instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from components.core.clusters import OUTLIER  # noqa: F401  (re-exported)
from components.core.config import StepConfig


class UmapSettings(StepConfig):
    n_neighbors: int = 15
    n_components: int = 5
    min_dist: float = 0.0
    metric: str = "cosine"
    n_epochs: int | None = None  # None: UMAP's own default (500 below 10k points, 200 above)


class HdbscanSettings(StepConfig):
    min_cluster_size: int = 12
    min_samples: int | None = None  # None: = min_cluster_size (BERTopic's default)
    # "eom" (excess of mass, the default) favours a few large clusters, "leaf" many small homogeneous ones.
    cluster_selection_method: str = "eom"
    # "auto": the `hdbscan` package when installed, else scikit-learn's; or force "hdbscan" / "sklearn".
    backend: str = "auto"


def default_reducer(settings: UmapSettings, n_points: int, seed: int) -> Any:
    import umap

    return umap.UMAP(
        n_neighbors=max(2, min(settings.n_neighbors, n_points - 1)),
        # spectral initialisation needs fewer dimensions than points
        n_components=max(1, min(settings.n_components, n_points - 2)),
        min_dist=settings.min_dist,
        metric=settings.metric,
        n_epochs=settings.n_epochs,
        random_state=seed,
    )


def default_clusterer(settings: HdbscanSettings, n_points: int) -> Any:
    min_samples = None if settings.min_samples is None else min(settings.min_samples, n_points - 1)
    if settings.backend in ("auto", "hdbscan"):
        try:
            import hdbscan

            return hdbscan.HDBSCAN(
                min_cluster_size=settings.min_cluster_size,
                min_samples=min_samples,
                cluster_selection_method=settings.cluster_selection_method,
            )
        except ImportError:  # scikit-learn >= 1.3 ships the same algorithm
            if settings.backend == "hdbscan":
                raise
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(
        min_cluster_size=settings.min_cluster_size,
        min_samples=min_samples,
        cluster_selection_method=settings.cluster_selection_method,
        copy=True,
    )


def cluster_embeddings(
    embeddings: np.ndarray,
    umap_settings: UmapSettings,
    hdbscan_settings: HdbscanSettings,
    seed: int,
    reducer: Any = None,
    clusterer: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (``-1`` = outlier) and membership probabilities, one per row of ``embeddings``.

    ``reducer`` (``fit_transform``) defaults to UMAP and ``clusterer`` (``fit`` then ``labels_``, optionally
    ``probabilities_``) to HDBSCAN, so tests and users can plug in cheaper or different ones; ``reducer=False``
    clusters the embeddings as they are.
    """
    n_points = len(embeddings)
    if n_points < max(hdbscan_settings.min_cluster_size, 3):  # not even one cluster fits: all outliers
        return np.full(n_points, OUTLIER, dtype=int), np.zeros(n_points)
    if reducer is None:
        reducer = default_reducer(umap_settings, n_points, seed)
    reduced = embeddings if reducer is False else reducer.fit_transform(embeddings)
    if clusterer is None:
        clusterer = default_clusterer(hdbscan_settings, n_points)
    clusterer.fit(reduced)
    labels = np.asarray(clusterer.labels_, dtype=int)
    probabilities = getattr(clusterer, "probabilities_", None)
    if probabilities is None:
        probabilities = (labels != OUTLIER).astype(float)
    return labels, np.asarray(probabilities, dtype=float)


def renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0, 1, ... from the largest cluster down: clusterers number arbitrarily, people read top-down."""
    sizes = Counter(int(label) for label in labels if label != OUTLIER)
    order = sorted(sizes, key=lambda c: (-sizes[c], c))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping.get(int(label), OUTLIER) for label in labels], dtype=int)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
