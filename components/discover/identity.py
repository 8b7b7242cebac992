"""The fitted cluster model on disk, assignment of new calls without refitting, and stable ids across refits.

The model (a folder, a DVC output) holds each cluster's unit centroid in the embedding space, the sorted cosine
similarities of its members to it, its members' record ids, the text/embedding settings, an index of the fit's
calls (their unit task embeddings, cluster ids with ``-1`` for outliers, and task keys) and the pinned tasks.
That is all an S6 refresh or a router needs to place a new call, in pure numpy, without UMAP (whose transform
costs a numba compile and is not stable across versions):

- :func:`assign` places a call **from its request alone** (the router has no answer yet; it is the function the
  router calls): a pinned task whose rule the request decides (agent, tool set) takes it; else its
  ``neighbors`` nearest fit calls vote, and it joins the winning cluster when the winner is a cluster (not the
  outliers), holds at least ``min_vote_share`` of the votes and the call's similarity to that cluster's centroid
  reaches the cluster's cut-off (the similarity that ``coverage`` of its own members reach); anything else is
  ``-1`` and stays with the LLM. The fit splits clusters by the answer (:mod:`components.discover.task_keys`),
  which the centroid alone cannot see; the neighbours carry that split to new requests. ``probability`` is the
  share of the cluster's members that are no closer to the centroid than the new call (1 = as central as the
  most central member). A model without an index (saved before it existed) places by nearest centroid.
- :func:`assign_with_answers` is the fit's own rule for a call whose answer is known (only neighbours with the
  same task key vote); :func:`request_only_agreement` compares the two on held-out calls.
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
from components.discover.task_keys import PinnedTask

ASSIGNMENT_COLUMNS = ["record_id", "cluster_id", "probability"]
MODEL_FILE = "model.json"
CENTROIDS_FILE = "centroids.npy"
SIMILARITIES_FILE = "member_similarities.npz"
MEMBERS_FILE = "members.parquet"
INDEX_FILE = "index.npy"
INDEX_LABELS_FILE = "index.parquet"
# Rows of the distance matrix computed at once (bounded memory at any log size).
_BLOCK_ROWS = 2048


class AssignSettings(StepConfig):
    # A new call joins its nearest cluster when at least this share of the cluster's members is no closer to it.
    coverage: float = 0.95
    min_similarity: float = 0.0  # and never below this cosine similarity
    neighbors: int = 5  # fit calls that vote on a new call's cluster (request-only assignment)
    min_vote_share: float = 0.6  # below this share for the winner, the call stays with the LLM


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
    index: np.ndarray | None = None  # unit task embeddings of the fit's calls (members and outliers)
    index_labels: np.ndarray | None = None  # their cluster ids, -1 for outliers
    index_keys: list[str] | None = None  # their task keys (task_keys.task_key)
    pinned: dict[int, PinnedTask] | None = None  # cluster id -> the user's rule

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
    keys: list[str] | None = None,
    pinned: dict[int, PinnedTask] | None = None,
) -> ClusterModel:
    """The model of a fit: ``labels`` of the calls whose unit embeddings are ``unit``; ``keys`` (their task keys)
    let :func:`assign_with_answers` apply the fit's rule to new calls."""
    labels = np.asarray(labels, dtype=int)
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
    return ClusterModel(
        cluster_ids,
        centroids,
        similarities,
        members,
        embedding_model,
        text,
        next_id,
        assign_settings,
        np.asarray(unit, dtype=np.float32),
        labels.copy(),
        list(keys) if keys is not None else [""] * len(labels),
        {c: rule for c, rule in (pinned or {}).items() if c in cluster_ids},
    )


def save_model(model: ClusterModel, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / CENTROIDS_FILE, model.centroids.astype(np.float32))
    np.savez(folder / SIMILARITIES_FILE, **{f"c{c}": s for c, s in model.member_similarities.items()})
    model.members.to_parquet(folder / MEMBERS_FILE, index=False)
    if model.index is not None:
        np.save(folder / INDEX_FILE, model.index.astype(np.float32))
        pd.DataFrame({"cluster_id": model.index_labels, "task_key": model.index_keys}).to_parquet(
            folder / INDEX_LABELS_FILE, index=False
        )
    meta = {
        "kind": "nearest_centroid" if model.index is None else "neighbours_vote",
        "cluster_ids": model.cluster_ids,
        "embedding_model": model.embedding_model,
        "text": model.text.model_dump(),
        "next_cluster_id": model.next_cluster_id,
        "assign": model.assign_settings.model_dump(),
        "cutoffs": [round(float(c), 6) for c in model.cutoffs()],
        "pinned": {str(c): rule.model_dump() for c, rule in (model.pinned or {}).items()},
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
    index = index_labels = index_keys = None
    if (folder / INDEX_FILE).exists():
        index = np.load(folder / INDEX_FILE)
        table = pd.read_parquet(folder / INDEX_LABELS_FILE)
        index_labels, index_keys = table.cluster_id.to_numpy(dtype=int), table.task_key.tolist()
    return ClusterModel(
        [int(c) for c in meta["cluster_ids"]],
        np.load(folder / CENTROIDS_FILE),
        similarities,
        pd.read_parquet(folder / MEMBERS_FILE),
        meta["embedding_model"],
        TextSettings(**meta["text"]),
        int(meta["next_cluster_id"]),
        AssignSettings(**meta["assign"]),
        index,
        index_labels,
        index_keys,
        {int(c): PinnedTask(**rule) for c, rule in meta.get("pinned", {}).items()},
    )


def _embedded(inputs, model: ClusterModel, record_ids, cache_dir, embed) -> tuple[np.ndarray, list[str]]:
    if isinstance(inputs, np.ndarray):
        ids = record_ids if record_ids is not None else [str(i) for i in range(len(inputs))]
        embeddings = inputs
    else:
        embeddings, _ = embed_tasks(list(inputs), model.embedding_model, model.text, cache_dir, embed)
        ids = [record.record_id for record in inputs]
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings for {len(ids)} record ids")
    return np.asarray(embeddings), list(ids)


def assign(
    inputs: list[CallRecord] | np.ndarray,
    model_dir: Path | ClusterModel,
    record_ids: list[str] | None = None,
    cache_dir: Path | None = None,
    embed=None,
) -> pd.DataFrame:
    """``record_id, cluster_id, probability`` for new calls from their requests alone (the router's placement),
    against a saved model, without refitting (see the module docstring).

    ``inputs``: records (embedded with the model's embedding model and text template, through ``cache_dir``) or
    an embedding matrix (then ``record_ids`` name the rows; default ``"0"``, ``"1"``...). Unplaced calls get
    cluster ``-1`` and probability 0.
    """
    model = model_dir if isinstance(model_dir, ClusterModel) else load_model(model_dir)
    embeddings, ids = _embedded(inputs, model, record_ids, cache_dir, embed)
    records = None if isinstance(inputs, np.ndarray) else list(inputs)
    cluster_of, probability = assign_embedded(records, embeddings, model)
    return pd.DataFrame(
        {"record_id": ids, "cluster_id": cluster_of, "probability": probability}, columns=ASSIGNMENT_COLUMNS
    )


def assign_embedded(
    records: list[CallRecord] | None, embeddings: np.ndarray, model: ClusterModel
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign` once the calls are embedded: the neighbours' vote, then the pinned rules a request decides
    (agent, tool set), which win (``records`` None: embeddings only, no rules)."""
    cluster_of, probability = place(embeddings, model)
    for row, record in enumerate(records or []):
        rule = next((c for c, r in (model.pinned or {}).items() if r.request_only and r.matches(record)), None)
        if rule is not None:
            cluster_of[row], probability[row] = rule, 1.0
    return cluster_of, probability


def assign_with_answers(
    records: list[CallRecord], keys: list[str], model: ClusterModel, embeddings: np.ndarray | None = None
) -> np.ndarray:
    """The fit's own cluster of calls whose answers are known: only fit calls with the same task key (``keys``,
    from :func:`components.discover.task_keys.task_key`) vote, and every pinned rule applies."""
    if embeddings is None:
        embeddings, _ = _embedded(records, model, None, None, None)
    cluster_of, _ = place(np.asarray(embeddings), model, keys)
    for row, record in enumerate(records):
        rule = next((c for c, r in (model.pinned or {}).items() if r.matches(record)), None)
        if rule is not None:
            cluster_of[row] = rule
    return cluster_of


def place(
    embeddings: np.ndarray,
    model: ClusterModel,
    keys: list[str] | None = None,
    exclude_self: bool = False,
    cutoff: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ids (``-1``: the LLM) and probabilities by the neighbours' vote and the centroid cut-off.

    ``keys``: only index calls with the same task key vote (the fit's rule when the answer is known).
    ``exclude_self``: ``embeddings`` are the index itself, row for row, and a call does not vote for itself
    (leave-one-out). ``cutoff=False``: the vote alone (which cluster, not how far from it).
    """
    n_calls = len(embeddings)
    cluster_of = np.full(n_calls, OUTLIER, dtype=int)
    probability = np.zeros(n_calls)
    if not n_calls or not model.cluster_ids:
        return cluster_of, probability
    unit = unit_rows(embeddings)
    position = {c: i for i, c in enumerate(model.cluster_ids)}
    centroid_similarity = unit @ model.centroids.T
    if model.index is None or not len(model.index):  # a model saved before the index: nearest centroid
        winners = np.array([model.cluster_ids[i] for i in centroid_similarity.argmax(axis=1)])
    else:
        winners = _vote(unit, model, keys, exclude_self)
    cutoffs = model.cutoffs()
    for row in np.flatnonzero(winners != OUTLIER):
        cluster_id = int(winners[row])
        similarity = centroid_similarity[row, position[cluster_id]]
        if not cutoff or similarity >= cutoffs[position[cluster_id]]:
            members = model.member_similarities[cluster_id]
            cluster_of[row] = cluster_id
            probability[row] = np.searchsorted(members, similarity, side="right") / len(members)
    return cluster_of, probability


def _vote(unit: np.ndarray, model: ClusterModel, keys: list[str] | None, exclude_self: bool) -> np.ndarray:
    """The label most of each call's nearest index calls have (ties: the nearer), or -1 below the vote share."""
    settings = model.assign_settings
    index_keys = np.asarray(model.index_keys) if keys is not None else None
    winners = np.full(len(unit), OUTLIER, dtype=int)
    for start in range(0, len(unit), _BLOCK_ROWS):
        similarity = unit[start : start + _BLOCK_ROWS] @ model.index.T
        if exclude_self:
            rows = np.arange(len(similarity))
            similarity[rows, start + rows] = -np.inf
        if index_keys is not None:
            similarity[index_keys[None, :] != np.asarray(keys[start : start + _BLOCK_ROWS])[:, None]] = -np.inf
        k = max(1, min(settings.neighbors, similarity.shape[1] - int(exclude_self)))
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        for row, columns in enumerate(nearest):
            valid = columns[np.isfinite(similarity[row, columns])]
            if not len(valid):
                continue
            valid = valid[np.argsort(-similarity[row, valid], kind="stable")]
            votes = model.index_labels[valid]
            labels, counts = np.unique(votes, return_counts=True)
            best = counts.max()
            tied = set(labels[counts == best].tolist())
            winner = next(int(v) for v in votes if v in tied)  # the nearest of the tied labels
            if best / k >= settings.min_vote_share:
                winners[start + row] = winner
    return winners


def request_only_agreement(
    records: list[CallRecord],
    keys: list[str],
    model: ClusterModel,
    embeddings: np.ndarray,
    fit_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """On calls the model was not built from: how often the request-only assignment (the router's) equals the
    fit's own one (``fit_labels``, else :func:`assign_with_answers`), and how the others split: sent to the LLM
    although the fit placed them (safe), or placed in another cluster (an SLM of another task would answer)."""
    if not records:
        return {"calls": 0, "agreement": 1.0, "to_llm_instead": 0.0, "wrong_cluster": 0.0}
    request_only, _ = assign_embedded(records, embeddings, model)
    with_answers = (
        np.asarray(fit_labels, dtype=int)
        if fit_labels is not None
        else assign_with_answers(records, keys, model, embeddings)
    )
    differ = request_only != with_answers
    return {
        "calls": len(records),
        "agreement": round(float(np.mean(~differ)), 4),
        "to_llm_instead": round(float(np.mean(differ & (request_only == OUTLIER))), 4),
        "wrong_cluster": round(float(np.mean(differ & (request_only != OUTLIER))), 4),
    }


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
