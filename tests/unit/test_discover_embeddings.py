"""S3 task text template and the content-hash embedding cache (a counting fake model stands in for MiniLM)."""

import numpy as np
import pytest

from components.embeddings import EmbeddingCache, TextSettings, cache_key, embed_cached, task_text
from tests.unit.test_discover import call


class CountingModel:
    """Deterministic fake embeddings (a hash of the text and model) that records every text it embeds."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, texts: list[str], model_ref: str) -> np.ndarray:
        self.seen += texts
        rows = [np.random.default_rng(abs(hash((model_ref, text))) % 2**32).normal(size=8) for text in texts]
        return np.asarray(rows, dtype=np.float32)


def test_template_orders_sections_drops_empty_ones_and_renders_typed_signatures():
    record = call("r1", 0, 1)
    text = task_text(record, TextSettings(template="{request}\nTools: {tools}\nSystem: {system}", tool_signature="typed"))
    assert text.splitlines()[0] == "weather forecast for Rome, will it rain?"
    assert text.splitlines()[1].startswith("Tools: get_weather(city: any); book_flight(origin: any")
    no_tools = record.model_copy(update={"tools": []})
    assert task_text(no_tools, TextSettings(tool_signature="names")).splitlines() == [
        "System: You are a travel assistant.", "Request: weather forecast for Rome, will it rain?"]
    assert task_text(record, TextSettings(tool_signature="names")).splitlines()[1] == "Tools: get_weather; book_flight"
    # a part repeated weighs more; a fixed line without placeholders is kept
    weighted = task_text(record, TextSettings(template="Task:\n{request}\n{request}"))
    assert weighted.count("weather forecast") == 2 and weighted.startswith("Task:")
    with pytest.raises(ValueError, match="unknown placeholder"):
        task_text(record, TextSettings(template="{answer}"))


def test_cache_embeds_each_text_once_per_model_and_survives_a_new_process(tmp_path):
    model = CountingModel()
    texts = ["book a flight", "weather in Rome", "book a flight"]
    first, computed = embed_cached(texts, "model-a", tmp_path, model)
    assert computed == 2 and sorted(model.seen) == ["book a flight", "weather in Rome"]  # duplicates once
    assert np.array_equal(first[0], first[2])

    model.seen.clear()
    again, computed = embed_cached(["weather in Rome", "book a flight", "summarize invoice"], "model-a", tmp_path, model)
    assert computed == 1 and model.seen == ["summarize invoice"]
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[1], first[0])

    model.seen.clear()
    _, computed = embed_cached(["weather in Rome"], "model-b", tmp_path, model)  # another model: its own vector
    assert computed == 1 and model.seen == ["weather in Rome"]
    assert len(EmbeddingCache(tmp_path)) == 4 and cache_key("model-b", "weather in Rome") in EmbeddingCache(tmp_path)


def test_a_shard_without_its_keys_is_ignored_not_misread(tmp_path):
    model = CountingModel()
    embed_cached(["a"], "m", tmp_path, model)
    (tmp_path / "shard-0.keys.npy").unlink()  # as if the process died between the two writes
    model.seen.clear()
    vectors, computed = embed_cached(["a"], "m", tmp_path, model)
    assert computed == 1 and model.seen == ["a"] and vectors.shape == (1, 8)


def test_without_a_cache_every_text_is_embedded():
    model = CountingModel()
    _, computed = embed_cached(["a", "b"], "m", None, model)
    assert computed == 2 and model.seen == ["a", "b"]
