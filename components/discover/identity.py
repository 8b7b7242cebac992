"""The fitted cluster model on disk, assignment of new calls without refitting, and stable ids across refits.

The model (a folder, a DVC output) holds each cluster's unit centroid in the embedding space, the sorted cosine
similarities of its members to it, its members' record ids and the text/embedding settings. That is all an
S6 refresh or a router needs to place a new call, in pure numpy, without UMAP (whose transform costs a numba
compile and is not stable across versions):

- :func:`assign` takes records (embedded through the cache) or embeddings and returns, per call, the nearest
  cluster if its similarity reaches that cluster's cut-off (the similarity that ``coverage`` of the cluster's own
  members reach), else ``-1`` (stays with the LLM). ``probability`` is the share of the cluster's members that are
  no closer to the centroid than the new call (1 = as central as the most central member).
- :func:`stable_ids` maps a refit's clusters onto the previous model's ids by member overlap (Jaccard of record
  ids) and centroid similarity, solved as one assignment problem, so a refresh does not rename every cluster;
  new clusters get ids never used before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.discover.clustering import OUTLIER, unit_rows
from components.discover.embeddings import TextSettings, embed_tasks

ASSIGNMENT_COLUMNS = ["record_id", "cluster_id", "probability"]
MODEL_FILE = "model.json"
CENTROIDS_FILE = "centroids.npy"
SIMILARITIES_FILE = "member_similarities.npz"
MEMBERS_FILE = "members.parquet"


class AssignSettings(StepConfig):
    # A new call joins its nearest cluster when at least this share of the cluster's members is no closer to it.
    coverage: float = 0.95
    min_similarity: float = 0.0  # and never below this cosine similarity


class IdentitySettings(StepConfig):
    min_member_overlap: float = 0.3  # Jaccard of record ids for a refit cluster to keep an old id...
    min_centroid_similarity: float = 0.9  # ...or cosine of the centroids (same embedding model only)


@dataclass
class ClusterModel:
    cluster_ids: list[int]
    centroids: np.ndarray  # unit rows, aligned with cluster_ids
    member_similarities: dict[int, np.ndarray]  # sorted ascending
    members: pd.DataFrame  # record_id, cluster_id
    embedding_model: str
    text: TextSettings
    next_cluster_id: int
    assign_settings: AssignSettings

    def cutoffs(self) -> np.ndarray:
        quantile = 1.0 - self.assign_settings.coverage
        return np.array(
            [
                max(float(np.quantile(self.member_similarities[c], quantile)), self.assign_settings.min_similarity)
                for c in self.cluster_ids
            ],
            dtype=np.float32,
        )


def build_model(
    unit: np.ndarray,
    labels: np.ndarray,
    record_ids: list[str],
    embedding_model: str,
    text: TextSettings,
    assign_settings: AssignSettings,
    next_cluster_id: int | None = None,
) -> ClusterModel:
    cluster_ids = sorted(int(c) for c in set(labels.tolist()) - {OUTLIER})
    centroids = (
        unit_rows(np.vstack([unit[labels == c].mean(axis=0) for c in cluster_ids]))
        if cluster_ids
        else np.zeros((0, unit.shape[1] if unit.ndim == 2 else 0), dtype=np.float32)
    )
    similarities = {c: np.sort(unit[labels == c] @ centroids[i]) for i, c in enumerate(cluster_ids)}
    members = pd.DataFrame({"record_id": record_ids, "cluster_id": labels.astype(int)})
    members = members[members.cluster_id != OUTLIER].reset_index(drop=True)
    next_id = max(next_cluster_id or 0, max(cluster_ids, default=-1) + 1)
    return ClusterModel(cluster_ids, centroids, similarities, members, embedding_model, text, next_id, assign_settings)


def save_model(model: ClusterModel, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / CENTROIDS_FILE, model.centroids.astype(np.float32))
    np.savez(folder / SIMILARITIES_FILE, **{f"c{c}": s for c, s in model.member_similarities.items()})
    model.members.to_parquet(folder / MEMBERS_FILE, index=False)
    meta = {
        "kind": "nearest_centroid",
        "cluster_ids": model.cluster_ids,
        "embedding_model": model.embedding_model,
        "text": model.text.model_dump(),
        "next_cluster_id": model.next_cluster_id,
        "assign": model.assign_settings.model_dump(),
        "cutoffs": [round(float(c), 6) for c in model.cutoffs()],
    }
    (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_model(folder: Path) -> ClusterModel:
    folder = Path(folder)
    if not (folder / MODEL_FILE).exists():
        raise FileNotFoundError(f"no cluster model in {folder}: run S3 discover first")
    meta = json.loads((folder / MODEL_FILE).read_text())
    with np.load(folder / SIMILARITIES_FILE) as stored:
        similarities = {int(name[1:]): stored[name] for name in stored.files}
    return ClusterModel(
        [int(c) for c in meta["cluster_ids"]],
        np.load(folder / CENTROIDS_FILE),
        similarities,
        pd.read_parquet(folder / MEMBERS_FILE),
        meta["embedding_model"],
        TextSettings(**meta["text"]),
        int(meta["next_cluster_id"]),
        AssignSettings(**meta["assign"]),
    )


def assign(
    inputs: list[CallRecord] | np.ndarray,
    model_dir: Path | ClusterModel,
    record_ids: list[str] | None = None,
    cache_dir: Path | None = None,
    embed=None,
) -> pd.DataFrame:
    """``record_id, cluster_id, probability`` for new calls, against a saved model, without refitting.

    ``inputs``: records (embedded with the model's embedding model and text template, through ``cache_dir``) or
    an embedding matrix (then ``record_ids`` name the rows; default ``"0"``, ``"1"``...). Unplaced calls get
    cluster ``-1`` and probability 0.
    """
    model = model_dir if isinstance(model_dir, ClusterModel) else load_model(model_dir)
    if isinstance(inputs, np.ndarray):
        embeddings = inputs
        ids = record_ids if record_ids is not None else [str(i) for i in range(len(inputs))]
    else:
        embeddings, _ = embed_tasks(list(inputs), model.embedding_model, model.text, cache_dir, embed)
        ids = [record.record_id for record in inputs]
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings for {len(ids)} record ids")
    cluster_of = np.full(len(ids), OUTLIER, dtype=int)
    probability = np.zeros(len(ids))
    if len(ids) and model.cluster_ids:
        similarity = unit_rows(embeddings) @ model.centroids.T
        nearest = similarity.argmax(axis=1)
        best = similarity[np.arange(len(ids)), nearest]
        placed = best >= model.cutoffs()[nearest]
        for row in np.flatnonzero(placed):
            cluster_id = model.cluster_ids[nearest[row]]
            members = model.member_similarities[cluster_id]
            cluster_of[row] = cluster_id
            probability[row] = np.searchsorted(members, best[row], side="right") / len(members)
    return pd.DataFrame(
        {"record_id": list(ids), "cluster_id": cluster_of, "probability": probability}, columns=ASSIGNMENT_COLUMNS
    )


def stable_ids(
    labels: np.ndarray,
    record_ids: list[str],
    unit: np.ndarray,
    embedding_model: str,
    previous: ClusterModel | None,
    settings: IdentitySettings,
) -> tuple[np.ndarray, int]:
    """``labels`` (any numbering, ``-1`` kept) renamed to the previous model's ids where a cluster matches one,
    else to fresh ids; and the next id never used. Without a previous model: numbered by size (largest = 0)."""
    from scipy.optimize import linear_sum_assignment

    from components.discover.clustering import renumber_by_size

    by_size = renumber_by_size(labels)
    if previous is None or not previous.cluster_ids:
        next_id = max(int(by_size.max(initial=OUTLIER)) + 1, previous.next_cluster_id if previous else 0)
        return by_size, next_id
    new_ids = sorted(int(c) for c in set(by_size.tolist()) - {OUTLIER})
    score = np.zeros((len(new_ids), len(previous.cluster_ids)))
    ids = np.asarray(record_ids)
    old_members = {c: set(group.record_id) for c, group in previous.members.groupby("cluster_id")}
    same_space = embedding_model == previous.embedding_model and previous.centroids.shape[1] == unit.shape[1]
    centroid_similarity = (
        (unit_rows(np.vstack([unit[by_size == c].mean(axis=0) for c in new_ids])) @ previous.centroids.T)
        if same_space and new_ids
        else None
    )
    for row, new in enumerate(new_ids):
        members = set(ids[by_size == new].tolist())
        for column, old in enumerate(previous.cluster_ids):
            union = members | old_members.get(old, set())
            jaccard = len(members & old_members.get(old, set())) / len(union) if union else 0.0
            cosine = float(centroid_similarity[row, column]) if centroid_similarity is not None else 0.0
            if jaccard >= settings.min_member_overlap or cosine >= settings.min_centroid_similarity:
                score[row, column] = jaccard + cosine
    mapping: dict[int, int] = {}
    for row, column in zip(*linear_sum_assignment(-score)):
        if score[row, column] > 0:
            mapping[new_ids[row]] = previous.cluster_ids[column]
    next_id = previous.next_cluster_id
    for new in new_ids:  # unmatched, largest first
        if new not in mapping:
            mapping[new] = next_id
            next_id += 1
    renamed = np.array([mapping.get(int(label), OUTLIER) for label in by_size], dtype=int)
    return renamed, next_id
