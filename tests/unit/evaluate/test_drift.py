"""Drift (PSI of the cluster mix, outlier share) and the refresh bookkeeping (stable ids, splits, retrain plan)."""

import json
import math

import pandas as pd
import pytest

from components.core.clusters import ClusterSummary
from components.evaluate.drift import (
    DriftConfig,
    cluster_mix,
    describe_drift,
    detect_drift,
    population_stability_index,
)
from components.evaluate.refresh import (
    RefreshConfig,
    RetrainPolicy,
    match_cluster_ids,
    next_state,
    plan_retraining,
    refresh_splits,
    stabilize_clusters,
)


def test_cluster_mix_counts_outliers_and_sums_to_one():
    mix = cluster_mix([0, 0, 1, -1])
    assert mix == {"-1": 0.25, "0": 0.5, "1": 0.25}
    assert cluster_mix([]) == {}


def test_psi_is_zero_for_the_same_mix_and_matches_the_formula():
    reference = {"0": 0.5, "1": 0.5}
    assert population_stability_index(reference, reference) == 0.0
    shifted = {"0": 0.2, "1": 0.8}
    expected = (0.2 - 0.5) * math.log(0.2 / 0.5) + (0.8 - 0.5) * math.log(0.8 / 0.5)
    assert population_stability_index(reference, shifted) == pytest.approx(expected)


def test_a_new_cluster_counts_through_the_epsilon_floor():
    psi = population_stability_index({"0": 1.0}, {"0": 0.5, "2": 0.5}, epsilon=1e-4)
    assert psi == pytest.approx((0.5 - 1.0) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))


def test_detect_drift_flags_mix_and_outliers_against_thresholds():
    cfg = DriftConfig(psi_threshold=0.2, outlier_share_increase=0.1)
    steady = detect_drift({"0": 0.5, "1": 0.45, "-1": 0.05}, {"0": 0.48, "1": 0.46, "-1": 0.06}, cfg)
    assert not steady.drifted and steady.reasons == []
    shifted = detect_drift({"0": 0.5, "1": 0.45, "-1": 0.05}, {"0": 0.2, "1": 0.4, "-1": 0.4}, cfg)
    assert shifted.mix_drifted and shifted.outliers_drifted and len(shifted.reasons) == 2
    assert shifted.to_dict()["drifted"] is True


@pytest.mark.parametrize(
    "reference, current, why",
    [({}, {"0": 1.0}, "first refresh"), ({"0": 1.0}, {}, "no calls"), ({}, {}, "first refresh")],
)
def test_an_empty_mix_makes_drift_not_measurable_neither_drift_nor_steady(reference, current, why):
    assert population_stability_index(reference, current) is None
    report = detect_drift(reference, current, DriftConfig()).to_dict()
    assert report["psi"] is None and report["drifted"] is None and report["mix_drifted"] is None
    assert report["reasons"] == [] and why in report["not_measurable"]
    line = describe_drift(report)
    assert "not measurable" in line and why in line
    assert "0.000" not in line and "no drift" not in line and "drifted" not in line


def test_a_measured_drift_is_described_with_its_figure_and_verdict():
    cfg = DriftConfig(psi_threshold=0.2, outlier_share_increase=0.1)
    steady = describe_drift(detect_drift({"0": 0.5, "1": 0.5}, {"0": 0.5, "1": 0.5}, cfg).to_dict())
    assert steady == "cluster-mix PSI 0.000, outliers 0.0% (no drift)"
    shifted = describe_drift(detect_drift({"0": 0.9, "1": 0.1}, {"0": 0.1, "1": 0.9}, cfg).to_dict())
    assert shifted.startswith("cluster-mix PSI ") and "-> drifted: cluster mix PSI" in shifted


def test_refit_clusters_keep_their_ids_by_shared_calls_and_new_ones_get_fresh_ids():
    previous = {"a": 0, "b": 0, "c": 1, "d": 1, "e": -1}
    # the refit numbered by size: old cluster 1 is now 0, old 0 is now 1, and a new cluster 2 appeared
    current = {"a": 1, "b": 1, "c": 0, "d": 0, "x": 0, "y": 2, "z": 2, "e": -1}
    assert match_cluster_ids(previous, current, min_overlap=0.5) == {-1: -1, 0: 1, 1: 0, 2: 2}
    merged = {"a": 0, "b": 0, "c": 0, "d": 0}  # two old clusters merged: only one can keep its id
    mapping = match_cluster_ids(previous, merged, min_overlap=0.5)
    assert mapping[0] in (0, 1)
    assert match_cluster_ids(previous, {"a": 0, "c": 0, "q": 0}, min_overlap=0.8)[0] == 2  # too mixed: new id


def test_a_task_merged_from_several_clusters_keeps_the_id_of_the_trained_one():
    # S3's api split merged the run's small clusters 0, 1 and 2 of one API into one task, beside new calls
    previous = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1, "f": 2, "g": 2, "h": 3}
    current = {"a": 5, "b": 5, "c": 5, "d": 5, "e": 5, "f": 5, "g": 5, "n1": 5, "n2": 5, "h": 6}
    # no old cluster holds half of the task's known calls (3 of 7 at most), but each lies wholly inside it
    assert match_cluster_ids(previous, current, min_overlap=0.5) == {-1: -1, 5: 1, 6: 3}  # the largest by default
    assert match_cluster_ids(previous, current, min_overlap=0.5, keep={2})[5] == 2  # the trained one
    # the refresh takes the trained clusters from its state
    assignments = pd.DataFrame({"record_id": list(current), "cluster_id": list(current.values())})
    splits = assignments.assign(split="train")
    clusters = [ClusterSummary(cluster_id=5, label="x", size=9), ClusterSummary(cluster_id=6, label="y", size=1)]
    state = {"refresh": 1, "clusters": {"2": {"trained_on": 2}}}
    stable = stabilize_clusters(assignments, clusters, splits, previous, state, ["n1", "n2"], RefreshConfig())
    assert sorted(set(stable.assignments.cluster_id)) == [2, 3]
    assert next(c for c in stable.clusters if c.cluster_id == 2).convert  # its challenger carries over


def test_refresh_splits_freeze_regression_sets_and_draw_fresh_tests_from_the_batch():
    assignments = pd.DataFrame(
        {"record_id": ["o1", "o2", "o3", "n1", "n2", "n3", "n4", "q"], "cluster_id": [0, 0, 0, 0, 0, 0, 0, -1]}
    )
    splits = refresh_splits(
        assignments, {"n1", "n2", "n3", "n4", "q"}, {0: ["o1"]}, max_fresh_test=2, seed=1, refresh_number=2
    )
    split = dict(zip(splits.record_id, splits.split))
    assert split["o1"] == "regression" and split["q"] == "outlier"
    assert split["o2"] == split["o3"] == "train"  # old calls are never fresh
    assert (
        sorted(r for r, s in split.items() if s == "test")
        == sorted(r for r in ["n1", "n2", "n3", "n4"] if split[r] == "test")
        and list(split.values()).count("test") == 2
    )
    again = refresh_splits(assignments, {"n1", "n2", "n3", "n4", "q"}, {0: ["o1"]}, 2, 1, 2)
    assert again.equals(splits)  # seeded


def test_plan_retrains_new_grown_and_degraded_clusters_only():
    clusters = [
        ClusterSummary(cluster_id=cluster_id, label=f"task {cluster_id}", size=20, convert=convert)
        for cluster_id, convert in [(0, True), (1, True), (2, True), (3, True), (4, False)]
    ]
    state = {
        "0": {"trained_on": 10, "champion_score": 0.8},
        "1": {"trained_on": 10, "champion_score": 0.8},
        "2": {"trained_on": 10, "champion_score": 0.8},
    }
    plan = plan_retraining(
        clusters,
        state,
        {0: 16, 1: 12, 2: 11, 3: 9, 4: 30},
        {1: 0.75, 2: 0.5},
        RetrainPolicy(min_new_train_calls=4, min_new_train_share=0.25, max_score_drop=0.1),
    )
    assert set(plan) == {0, 2, 3}
    assert "grew" in plan[0] and "dropped" in plan[2] and "new" in plan[3]


def test_next_state_keeps_the_first_regression_set_and_counts_refreshes():
    state = next_state({"refresh": 0, "clusters": {}}, {"0": 1.0}, {0: 10}, {0: 0.4}, {0: ["t1", "t2"]})
    state = next_state(state, {"0": 0.5, "1": 0.5}, {0: 16}, {0: 0.4}, {0: ["t9"]})
    assert state["refresh"] == 2 and state["mix"] == {"0": 0.5, "1": 0.5}
    assert state["clusters"]["0"] == {"trained_on": 16, "champion_score": 0.4, "regression_ids": ["t1", "t2"]}


def test_first_refresh_after_a_conversion_seeds_history_and_stable_ids(records, tmp_path):
    from components.core.schema import read_records, write_records, write_table
    from components.evaluate.refresh import RefreshConfig
    from tasks.refresh import STABLE_ASSIGNMENTS, seed_history_task

    cfg = RefreshConfig()
    assert seed_history_task.fn(cfg, "curated.parquet", "assignments.parquet", tmp_path) is False  # nothing yet
    write_records(records, tmp_path / "curated.parquet")
    write_table(
        pd.DataFrame({"record_id": [r.record_id for r in records], "cluster_id": 0, "probability": 1.0}),
        tmp_path / "assignments.parquet",
    )
    assert seed_history_task.fn(cfg, "curated.parquet", "assignments.parquet", tmp_path) is True
    assert [r.record_id for r in read_records(tmp_path / cfg.history)] == [r.record_id for r in records]
    assert len(pd.read_parquet((tmp_path / cfg.state).parent / STABLE_ASSIGNMENTS)) == len(records)
    assert seed_history_task.fn(cfg, "curated.parquet", "assignments.parquet", tmp_path) is False  # only once


def test_a_held_out_set_too_small_for_the_gate_accumulates_across_refreshes():
    # refresh 1 evaluated cluster 0 on its regression set; refresh 2 on 2 fresh calls, fewer than the gate's 3
    state = next_state({"refresh": 0, "clusters": {}}, {"0": 1.0}, {0: 10}, {0: 0.4}, {0: ["o1"]}, min_test_calls=3)
    assert "pending_test_ids" not in state["clusters"]["0"]  # the first set became the regression set
    state = next_state(state, {"0": 1.0}, {}, {0: 0.4}, {0: ["n1", "n2"]}, min_test_calls=3)
    assert state["clusters"]["0"]["pending_test_ids"] == ["n1", "n2"]
    # refresh 3: the pending calls stay held out (old calls otherwise train) beside calls of the new batch
    assignments = pd.DataFrame({"record_id": ["o1", "n1", "n2", "n3", "m1", "m2", "m3"], "cluster_id": [0] * 7})
    splits = refresh_splits(assignments, {"m1", "m2", "m3"}, {0: ["o1"]}, 3, 1, 3, carried={0: ["n1", "n2"]})
    split = dict(zip(splits.record_id, splits.split))
    assert split["n1"] == split["n2"] == "test" and split["n3"] == "train" and split["o1"] == "regression"
    assert sum(split[r] == "test" for r in ["m1", "m2", "m3"]) == 1
    # a decision on 3 held-out calls: the next batch starts afresh
    state = next_state(state, {"0": 1.0}, {}, {0: 0.5}, {0: ["n1", "n2", "m2"]}, min_test_calls=3)
    assert "pending_test_ids" not in state["clusters"]["0"]


def test_the_first_refresh_after_a_conversion_measures_drift_against_the_runs_mix(records, tmp_path):
    from components.core.schema import write_records, write_table
    from components.evaluate.refresh import RefreshConfig, load_state
    from tasks.refresh import seed_history_task

    cfg = RefreshConfig()
    write_records(records, tmp_path / "curated.parquet")
    ids = [r.record_id for r in records]
    labels = [0 if i % 2 else 1 for i in range(len(ids))]
    labels[0] = -1
    write_table(pd.DataFrame({"record_id": ids, "cluster_id": labels, "probability": 1.0}), tmp_path / "a.parquet")
    trained = {"cluster_id": 0, "n_train": 7, "base_model": "base", "adapter_dir": "models/adapters/cluster_0"}
    (tmp_path / "finetune.json").write_text(json.dumps({"clusters": [trained], "skipped": []}))  # as S5 writes it
    assert load_state(tmp_path / cfg.state)["mix"] == {}  # before: the first refresh had nothing to compare with
    assert seed_history_task.fn(cfg, "curated.parquet", "a.parquet", tmp_path, "finetune.json") is True
    state = load_state(tmp_path / cfg.state)
    n = len(ids)
    assert state["refresh"] == 0 and state["mix"] == pytest.approx(
        {"-1": 1 / n, "0": labels.count(0) / n, "1": labels.count(1) / n}
    )
    assert state["outlier_share"] == pytest.approx(1 / n)
    # the same mix in the batch: measured, and no drift
    report = detect_drift(state["mix"], dict(state["mix"]), DriftConfig())
    assert report.not_measurable is None and report.drifted is False
    # the cluster the run trained is not a "new cluster" to retrain on the same calls
    trained = ClusterSummary(cluster_id=0, label="x", size=labels.count(0), convert=True)
    assert plan_retraining([trained], state["clusters"], {0: 7}, {}, RefreshConfig().retrain) == {}
