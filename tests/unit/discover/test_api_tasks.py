"""The api split (issue 29): the first-level clusters of one agent that drive the same API with the same answer kind
are one task, when the request alone still places the calls back. Tiny inline data: blobs in 10-D stand in for the
embeddings and a stub first level returns fixed labels."""

import numpy as np

from components.discover.clustering import OUTLIER
from components.discover.discovery import discover
from components.discover.task_keys import TaskSettings, api_key, api_of_tools
from tests.unit.discover.test_discover_tasks import config, record

FILES, CAR = ["cd", "ls", "cat"], ["lockDoors", "startEngine"]


class Given:
    """A first level that returns the labels it was given (HDBSCAN's fragments, fine or coarse)."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def fit(self, points):
        self.labels_ = self.labels
        return self


def test_tools_the_log_offers_together_are_one_api():
    records = [record(f"f{i}", "r", None, FILES) for i in range(6)]
    records += [record(f"c{i}", "r", None, CAR) for i in range(6)]
    records += [record(f"b{i}", "r", None, FILES + CAR) for i in range(2)]  # a few conversations use both
    assert api_of_tools(records, 0.8) == {"cat": "cat", "cd": "cat", "ls": "cat", "lockDoors": "lockDoors"} | {
        "startEngine": "lockDoors"
    }
    # overlapping in 2 of 14 calls (Jaccard 2/14) is enough only at a threshold that low
    assert set(api_of_tools(records, 0.1).values()) == {"cat"}
    api_of = api_of_tools(records, 0.8)
    assert api_key(record("x", "r", "ls", FILES), api_of) == "cat@bot"
    assert api_key(record("x", "r", None, FILES), api_of) == "text@bot"
    assert api_key(record("x", "r", "startEngine", CAR, agent="other"), api_of) == "lockDoors@other"
    assert api_key(record("x", "r", "unknown_tool", CAR), api_of) == "unknown_tool@bot"  # never offered: its own API


def two_apis(per_blob: int = 12, seed: int = 0, same_requests: bool = False):
    """A file-system API and a car API, each asked for in two kinds of request (two blobs), and the agent's closing
    text answers beside each blob; with each call's true group (API or text) and its blob (the first level)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 10)) * 6
    if same_requests:  # the car's requests read like the file system's: the request cannot tell the APIs apart
        centers[2:] = centers[:2]
    records, points, truth, blob_of = [], [], [], []
    for blob in range(4):
        tools = FILES if blob < 2 else CAR
        for i in range(per_blob):
            text = i % 3 == 2
            function = None if text else tools[i % len(tools)]
            records.append(record(f"b{blob}-{i:02d}", f"blob {blob} step {i}", function, tools))
            points.append(centers[blob] + rng.normal(size=10) + (np.eye(10)[0] * 5 if text else 0.0))
            truth.append("text" if text else ("files" if blob < 2 else "car"))
            blob_of.append(2 * blob + int(text))
    return records, np.vstack(points), np.array(truth), np.array(blob_of)


def test_clusters_driving_the_same_api_with_the_same_answer_kind_are_one_task():
    records, embeddings, truth, blobs = two_apis(per_blob=15)
    cfg = config(min_cluster_size_to_convert=10)
    result = discover(records, cfg, embeddings=embeddings, reducer=False, clusterer=Given(blobs))
    assert result.task_split["split_by"] == "api" and result.task_split["instead_of"] == "function"
    labels = result.assignments.cluster_id.to_numpy()
    assert result.outlier_share <= 0.1
    # one task per API and one for the agent's text answers: 3, where the first level had 8 clusters
    assert len(result.clusters) == 3
    for cluster in result.clusters:
        assert len(set(truth[labels == cluster.cluster_id])) == 1
    # before this split, text vs tool call kept HDBSCAN's fragments: one task per kind of request
    answer_kind = config(task=TaskSettings(fallback_split_by=["answer_kind", "none"]), min_cluster_size_to_convert=10)
    fragments = discover(records, answer_kind, embeddings=embeddings, reducer=False, clusterer=Given(blobs))
    assert fragments.task_split["split_by"] == "answer_kind" and len(fragments.clusters) == 8


def test_the_tasks_do_not_depend_on_how_finely_the_first_level_cuts():
    records, embeddings, truth, blobs = two_apis()
    cfg = config(min_cluster_size_to_convert=10)
    coarse = discover(records, cfg, embeddings=embeddings, reducer=False, clusterer=Given(blobs // 4))
    fine = discover(records, cfg, embeddings=embeddings, reducer=False, clusterer=Given(np.arange(len(blobs)) // 3))
    # first-level outliers join the task their answer names too
    outliers = discover(records, cfg, embeddings=embeddings, reducer=False, clusterer=Given(np.full(len(blobs), -1)))
    labels = [r.assignments.cluster_id.to_numpy() for r in (coarse, fine, outliers)]
    for other in labels[1:]:
        assert len(set(other.tolist()) - {OUTLIER}) == 3
        # the same partition of the calls, whatever the numbering
        pairs = {(a, b) for a, b in zip(labels[0].tolist(), other.tolist())}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_apis_the_request_cannot_tell_apart_are_not_merged_into_tasks_the_router_cannot_find():
    records, embeddings, truth, blobs = two_apis(per_blob=20, same_requests=True)
    cfg = config(min_cluster_size_to_convert=10)
    # the first level cannot tell them apart either: one cluster per kind of request, both APIs in it
    result = discover(records, cfg, embeddings=embeddings, reducer=False, clusterer=Given(blobs % 4))
    # the API split keeps too few calls (the vote on a request is split between the two APIs): the next split wins
    assert result.task_split["split_by"] == "answer_kind"
    kept = result.task_split["fallbacks_kept"]
    assert kept["api"] < cfg.task.min_reproducible_share <= kept["answer_kind"] == result.task_split["kept_share"]
