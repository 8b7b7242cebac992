"""S3's outputs rewritten with stable cluster ids for a refresh, and each cluster's fresh and regression calls
(components/evaluate/refresh.py), on tiny inline tables."""

import pandas as pd

from components.core.clusters import ClusterSummary
from components.core.schema import CallRecord, ChatMessage
from components.evaluate.refresh import RefreshConfig, fresh_and_regression_calls, stabilize_clusters

CFG = RefreshConfig(min_cluster_overlap=0.5, max_fresh_test_per_cluster=2, seed=1)
# The previous refresh knew a, b (cluster 5) and c, d (cluster 7); the refit numbers them 0 and 1 the other way.
PREVIOUS = {"a": 5, "b": 5, "c": 7, "d": 7}


def refit() -> tuple[pd.DataFrame, list[ClusterSummary], pd.DataFrame]:
    ids = ["a", "b", "n1", "n2", "c", "d", "n3", "q"]
    assignments = pd.DataFrame({"record_id": ids, "cluster_id": [1, 1, 1, 1, 0, 0, 0, -1]})
    clusters = [
        ClusterSummary(cluster_id=0, label="time", size=3, convert=False),
        ClusterSummary(cluster_id=1, label="weather", size=4, convert=True),
    ]
    splits = pd.DataFrame(
        {
            "record_id": ids,
            "cluster_id": [1, 1, 1, 1, 0, 0, 0, -1],
            "split": ["train", "train", "train", "test", "train", "train", "test", "outlier"],
        }
    )
    return assignments, clusters, splits


def test_the_first_refresh_keeps_s3s_split_under_the_previous_ids():
    assignments, clusters, splits = refit()
    state = {"refresh": 0, "clusters": {"7": {"trained_on": 2}}}

    stable = stabilize_clusters(assignments, clusters, splits, PREVIOUS, state, ["n1", "n2", "n3"], CFG)

    assert stable.summary["id_mapping"] == {"-1": -1, "0": 7, "1": 5}
    assert list(stable.assignments.cluster_id) == [5, 5, 5, 5, 7, 7, 7, -1]
    assert list(stable.splits.cluster_id) == [5, 5, 5, 5, 7, 7, 7, -1]
    assert list(stable.splits.split) == list(splits.split)  # S3's own split
    # Cluster 7 has a trained model: it stays in the conversion though S3 did not pick it.
    assert [(c.cluster_id, c.convert) for c in stable.clusters] == [(7, True), (5, True)]
    assert [(c.cluster_id, c.convert) for c in clusters] == [(0, False), (1, True)]  # the inputs are left as they were
    assert stable.summary["clusters"] is stable.clusters
    assert stable.summary["mix_batch"] == {"5": 2 / 3, "7": 1 / 3}
    assert stable.summary["mix_all"] == {"-1": 1 / 8, "5": 0.5, "7": 3 / 8}
    assert stable.summary["train_sizes"] == {5: 3, 7: 2}
    assert stable.summary["test_ids"] == {5: ["n2"], 7: ["n3"]}
    assert stable.summary["regression_ids"] == {}
    assert list(assignments.cluster_id) == [1, 1, 1, 1, 0, 0, 0, -1]  # the inputs are left as they were


def test_a_later_refresh_freezes_the_regression_set_and_draws_fresh_calls_from_the_batch():
    assignments, clusters, splits = refit()
    state = {"refresh": 2, "clusters": {"5": {"trained_on": 2, "regression_ids": ["a"]}}}

    stable = stabilize_clusters(assignments, clusters, splits, PREVIOUS, state, ["n1", "n2", "n3", "q"], CFG)

    split = dict(zip(stable.splits.record_id, stable.splits.split))
    assert split["a"] == "regression" and split["b"] == "train" and split["q"] == "outlier"
    assert split["n1"] == split["n2"] == "test"  # both of cluster 5's batch calls: max_fresh_test_per_cluster
    assert split["n3"] == "test" and split["c"] == split["d"] == "train"
    assert stable.summary["regression_ids"] == {5: ["a"]}
    assert stable.summary["test_ids"] == {5: ["n1", "n2"], 7: ["n3"]}


def record(record_id: str) -> CallRecord:
    return CallRecord(
        record_id=record_id,
        messages=[ChatMessage(role="user", content=record_id)],
        response=ChatMessage(role="assistant", content="ok"),
    )


def test_a_clusters_fresh_and_regression_calls_take_its_id_as_a_number_or_as_text():
    records = {r: record(r) for r in ["t1", "t2", "g1", "x"]}
    splits = pd.DataFrame({"record_id": ["t1", "t2", "x"], "cluster_id": [3, 3, 4], "split": ["test", "test", "test"]})
    fresh, regression = fresh_and_regression_calls(records, splits, {3: ["g1", "gone"]}, 3)
    assert [r.record_id for r in fresh] == ["t1", "t2"] and [r.record_id for r in regression] == ["g1"]
    _, from_json = fresh_and_regression_calls(records, splits, {"3": ["g1"]}, 3)
    assert [r.record_id for r in from_json] == ["g1"]
    assert fresh_and_regression_calls(records, splits, {}, 4)[1] == []
