"""S3 on a long tail: grab-bags split by the called function, request-only assignment (the router's) against the
fit's own, mixed bags refused by the fitness, tasks pinned by rule. Tiny inline data: a handful of blobs in 10-D
stand in for the embeddings, and the first level (HDBSCAN) is kept or replaced by a stub that returns fixed labels."""

import json

import numpy as np
import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.discover.clustering import OUTLIER
from components.discover.discovery import DiscoverConfig, HdbscanSettings, discover
from components.discover.fitness import FitnessSettings
from components.discover.identity import assign, assign_with_answers, load_model, request_only_agreement, save_model
from components.discover.task_keys import PinnedTask, TaskSettings, function_family, split_by_task, task_key
from tests.unit.discover.test_discover import pca


class FixedLabels:
    """A first level that puts every call in one cluster: the grab-bag S3 used to make."""

    def fit(self, points):
        self.labels_ = np.zeros(len(points), dtype=int)
        return self


def record(record_id: str, request: str, function: str | None, tools: list[str], agent: str = "bot") -> CallRecord:
    answer = (
        ChatMessage(role="assistant", tool_calls=[ToolCall(name=function, arguments=json.dumps({"q": request}))])
        if function
        else ChatMessage(role="assistant", content="Which city do you mean?")
    )
    return CallRecord(
        record_id=record_id,
        agent=agent,
        messages=[ChatMessage(role="user", content=request)],
        tools=[{"type": "function", "function": {"name": name, "parameters": {}}} for name in tools],
        response=answer,
    )


def grab_bag(seed: int = 0, per_task: int = 20):
    """Three tasks (weather, payments, shell) whose requests form separate blobs, plus clarifying text answers
    next to the weather blob; returned with the embeddings and each call's true task."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 10)) * 6
    tasks = [("Weather_1_GetWeather", ["Weather_1_GetWeather"]), ("pay", ["pay", "refund"]), ("shell", ["shell"])]
    records, points, truth = [], [], []
    for t, (function, tools) in enumerate(tasks):
        for i in range(per_task):
            records.append(record(f"t{t}-{i:02d}", f"task {t} request {i}", function, tools))
            points.append(centers[t] + rng.normal(size=10))
            truth.append(function_family(function))
    for i in range(per_task):  # the same requests as the weather task, answered in text
        records.append(record(f"text-{i:02d}", f"task 0 unclear {i}", None, ["Weather_1_GetWeather"]))
        points.append(centers[0] + np.eye(10)[0] * 8 + rng.normal(size=10))
        truth.append("text")
    return records, np.vstack(points), np.array(truth)


def config(**overrides) -> DiscoverConfig:
    return DiscoverConfig(hdbscan=HdbscanSettings(min_cluster_size=8, min_samples=4), **overrides)


def test_function_family_drops_versions_only():
    assert function_family("Movies_3_FindMovies") == "Movies_FindMovies"
    assert function_family("Movies_1_FindMovies") == "Movies_FindMovies"
    assert function_family("extract_parameters_v1") == "extract_parameters"
    assert function_family("weather_v2.get") == "weather.get"
    assert function_family("holdings.get_13F_HR") == "holdings.get_13F_HR"
    assert function_family("cmd_controller.execute") == "cmd_controller.execute"


def test_a_grab_bag_is_split_by_the_called_function_and_text_answers_stay_apart():
    records, embeddings, truth = grab_bag()
    result = discover(records, config(), embeddings=embeddings, reducer=False, clusterer=FixedLabels())
    labels = result.assignments.cluster_id.to_numpy()
    assert len(result.clusters) == 4  # three functions and the text answers, out of one first-level cluster
    for cluster in result.clusters:
        members = truth[labels == cluster.cluster_id]
        assert len(set(members)) == 1 and cluster.dominant_task_share == 1.0 and cluster.distinct_tasks == 1
    assert {c.dominant_task for c in result.clusters} == {"Weather_GetWeather", "pay", "shell", "text"}
    assert result.outlier_share <= 0.05


def test_without_the_split_the_grab_bag_is_refused_as_a_mixed_bag_whatever_its_fitness():
    records, embeddings, _ = grab_bag()
    cfg = config(task=TaskSettings(split_by="none"), min_cluster_size_to_convert=5)
    result = discover(records, cfg, embeddings=embeddings, reducer=False, clusterer=FixedLabels())
    assert len(result.clusters) == 1
    bag = result.clusters[0]
    assert bag.size >= 70 and bag.distinct_tasks == 4 and bag.dominant_task_share < 0.3
    assert not bag.candidate and not bag.convert
    assert any(failure.startswith("mixed bag: 4 different answers") for failure in bag.candidate_failures)
    # with lower bars for the mix (and the embedding homogeneity) the same cluster passes: those are what refuse it
    lenient = config(
        task=TaskSettings(split_by="none"),
        min_cluster_size_to_convert=5,
        fitness=FitnessSettings(min_task_share=0.2, min_parts={"homogeneity": 0.0}),
    )
    again = discover(records, lenient, embeddings=embeddings, reducer=False, clusterer=FixedLabels())
    assert again.clusters[0].candidate


def test_small_parts_stay_with_the_llm_and_one_functions_parts_are_merged():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, -1, 0])
    keys = ["a", "a", "b", "a", "a", "text", "text", "a", "text"]
    merged, reasons = split_by_task(labels, keys, TaskSettings(min_task_calls=3))
    assert len(set(merged[[0, 1, 3, 4, 7]])) == 1 and merged[0] != -1  # one task: "a" across clusters + rescued
    assert merged[2] == -1 and merged[8] == -1 and set(merged[[5, 6]]) == {-1}  # parts of 1-2 calls
    assert reasons == {"task_smaller_than_min_task_calls": 4}
    kept_apart, reasons = split_by_task(labels, keys, TaskSettings(min_task_calls=2, rescue_outliers=False))
    assert merged[7] != -1 and kept_apart[7] == -1 and reasons["first_level_outlier"] == 1
    assert task_key(record("x", "hi", None, []), "answer_kind") == "text"
    assert task_key(record("x", "hi", "Music_3_PlayMedia", []), "function") == "Music_PlayMedia"


def test_request_only_assignment_reproduces_the_fit_and_is_what_assign_does(tmp_path):
    records, embeddings, truth = grab_bag()
    result = discover(records, config(), embeddings=embeddings, reducer=False, clusterer=FixedLabels())
    assert result.identity_check["calls"] == 16 and result.identity_check["agreement"] >= 0.95
    assert result.identity_check["agreement_with_fit_labels"] >= 0.75  # the cut-off leaves edge members out
    # new calls of the same tasks, never seen: the router's assign (request only) against the fit's rule
    fresh_records, fresh_embeddings, fresh_truth = grab_bag(seed=0)
    fresh_embeddings = fresh_embeddings + np.random.default_rng(5).normal(scale=0.3, size=fresh_embeddings.shape)
    keys = [task_key(r, "function") for r in fresh_records]
    check = request_only_agreement(fresh_records, keys, result.model, fresh_embeddings)
    assert check["agreement"] >= 0.95 and check["wrong_cluster"] <= 0.02
    model_dir = save_model(result.model, tmp_path / "model")
    by_router = assign(fresh_embeddings, model_dir).cluster_id.to_numpy()
    with_answers = assign_with_answers(fresh_records, keys, load_model(model_dir), fresh_embeddings)
    assert np.mean(by_router == with_answers) >= 0.95
    cluster_of_task = {c.dominant_task: c.cluster_id for c in result.clusters}
    placed = by_router >= 0
    assert np.mean([cluster_of_task[t] == c for t, c in zip(fresh_truth[placed], by_router[placed])]) >= 0.98


def test_request_only_disagreement_is_counted_as_wrong_cluster_or_sent_to_the_llm():
    records, embeddings, _ = grab_bag()
    result = discover(records, config(), embeddings=embeddings, reducer=False, clusterer=FixedLabels())
    labels = result.assignments.cluster_id.to_numpy()
    keys = [task_key(r, "function") for r in records]
    shifted = np.where(labels >= 0, (labels + 1) % len(result.clusters), labels)  # a fit that says otherwise
    check = request_only_agreement(records, keys, result.model, embeddings, shifted)
    assert check["agreement"] <= 0.05 and check["wrong_cluster"] >= 0.9
    far = np.random.default_rng(1).normal(size=embeddings.shape) * 60  # unlike any call seen: to the LLM
    assert (assign(far, result.model).cluster_id == -1).mean() >= 0.9


def test_pinned_tasks_take_their_calls_by_rule_and_the_router_applies_request_rules(tmp_path):
    records, embeddings, truth = grab_bag()
    extra = [record(f"b{i}", f"billing {i}", "pay", ["pay", "refund"], agent="billing-bot") for i in range(6)]
    records = records + extra
    embeddings = np.vstack([embeddings, embeddings[20:26]])  # they read like the payment calls
    pinned = [
        PinnedTask(name="billing agent", agent="billing-bot"),
        PinnedTask(name="shell", function="shell"),
        PinnedTask(name="weather tools", tool_set=["Weather_1_GetWeather"]),
    ]
    result = discover(records, config(pinned_tasks=pinned), embeddings=embeddings, reducer=pca())
    labels = result.assignments.cluster_id.to_numpy()
    by_name = {c.pinned: c for c in result.clusters if c.pinned}
    assert set(by_name) == {"billing agent", "shell", "weather tools"}
    assert by_name["billing agent"].size == 6 and by_name["shell"].size == 20
    assert by_name["weather tools"].size == 40  # the weather calls and their text answers: same tool set
    assert set(labels[-6:]) == {by_name["billing agent"].cluster_id}
    model = load_model(save_model(result.model, tmp_path / "model"))
    # the router sees the request only: the agent rule decides although the request reads like a payment
    newcomer = record("new", "billing again", None, ["pay", "refund"], agent="billing-bot")
    placed = assign([newcomer], model, embed=lambda texts, ref: np.tile(embeddings[20], (len(texts), 1)))
    assert placed.cluster_id[0] == by_name["billing agent"].cluster_id and placed.probability[0] == 1.0
    with pytest.raises(ValueError, match="at least one of"):
        PinnedTask(name="empty")


def agent_steps(seed: int = 0, per_blob: int = 30, text_share: float = 0.0, text_offset: float = 0.0):
    """Two agents' steps: within each blob the requests look alike (one conversation step after another) and the
    answer calls one of three tools at random, as a multi-turn agent's next call depends on tool results. A
    ``text_share`` of the steps answer in text instead (closing a turn), ``text_offset`` away from the call steps
    (the progress of the turn tells them apart; 0: the request cannot)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2, 10)) * 6
    tools = [["cd", "ls", "cat"], ["lockDoors", "startEngine", "pressBrakePedal"]]
    records, points = [], []
    for blob, names in enumerate(tools):
        for i in range(per_blob):
            text = rng.random() < text_share
            function = None if text else names[rng.integers(len(names))]
            records.append(record(f"b{blob}-{i:02d}", f"agent {blob} step {i}", function, names))
            points.append(centers[blob] + rng.normal(size=10) + (text_offset if text else 0.0))
    return records, np.vstack(points)


def test_when_the_request_cannot_tell_the_called_function_s3_falls_back_to_the_coarser_split():
    records, embeddings = agent_steps()
    cfg = config(min_cluster_size_to_convert=10)
    result = discover(records, cfg, embeddings=embeddings, reducer=False)
    # every step calls a tool: the first fallback, the agent's API (each blob's tool set), keeps them all
    assert result.task_split["split_by"] == "api" and result.task_split["instead_of"] == "function"
    assert result.task_split["which_kept"] < cfg.task.min_reproducible_share <= result.task_split["kept_share"]
    assert len(result.clusters) == 2 and result.outlier_share <= 0.1
    # one cluster per agent, each calling its three tools: one task, not a mixed bag
    for cluster in result.clusters:
        assert cluster.distinct_tasks == 3 and cluster.task_share == 1.0 and cluster.candidate
    # without the fallback the function split stands and the request alone places back (almost) nothing
    strict = config(task=TaskSettings(fallback_split_by=None), min_cluster_size_to_convert=10)
    kept = discover(records, strict, embeddings=embeddings, reducer=False)
    # kept_share, recounted from the outcome: of the calls the function split put in a task, those still in one
    # after the request-only check (the ones it dropped are counted by reason).
    placed_back = int((kept.assignments.cluster_id != OUTLIER).sum())
    dropped_by_check = sum(
        kept.outlier_reasons.get(reason, 0) for reason in ("request_does_not_place_it_back", "too_small_after_that")
    )
    assert dropped_by_check > 0
    expected_share = placed_back / (placed_back + dropped_by_check)
    assert kept.task_split == {"split_by": "function", "kept_share": pytest.approx(expected_share)}
    assert kept.task_split["kept_share"] < 0.5 and kept.outlier_share > 0.5


def test_text_answers_get_their_own_clusters_when_the_request_tells_them_from_tool_calls():
    records, embeddings = agent_steps(per_blob=40, text_share=0.4, text_offset=4.0)
    answer_kind = TaskSettings(fallback_split_by=["answer_kind", "none"])
    cfg = config(task=answer_kind, min_cluster_size_to_convert=10)
    result = discover(records, cfg, embeddings=embeddings, reducer=False)
    assert result.task_split["split_by"] == "answer_kind"
    labels = result.assignments.cluster_id.to_numpy()
    kinds = np.array([r.output_kind for r in records])
    clustered = [c for c in set(labels) if c != OUTLIER]
    assert len(clustered) == 4  # per agent: its tool calls, its closing answers
    for c in clustered:
        assert len(set(kinds[labels == c])) == 1


def test_when_the_request_cannot_tell_text_from_tool_calls_either_s3_keeps_the_first_level():
    records, embeddings = agent_steps(per_blob=40, text_share=0.4, text_offset=0.0)
    result = discover(records, config(min_cluster_size_to_convert=10), embeddings=embeddings, reducer=False)
    assert result.task_split["split_by"] == "none" and result.task_split["instead_of"] == "function"
    assert len(result.clusters) == 2 and result.outlier_share <= 0.1
