"""S3 task text template and the content-hash embedding cache (a counting fake model stands in for MiniLM)."""

import numpy as np
import pytest

from components.discover.embeddings import EmbeddingCache, TextSettings, cache_key, embed_cached, embed_tasks, task_text
from tests.unit.discover.test_discover import call


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
    text = task_text(
        record, TextSettings(template="{request}\nTools: {tools}\nSystem: {system}", tool_signature="typed")
    )
    assert text.splitlines()[0] == "weather forecast for Rome, will it rain?"
    assert text.splitlines()[1].startswith("Tools: get_weather(city: any); book_flight(origin: any")
    no_tools = record.model_copy(update={"tools": []})
    assert task_text(no_tools, TextSettings(tool_signature="names")).splitlines() == [
        "System: You are a travel assistant.",
        "Request: weather forecast for Rome, will it rain?",
    ]
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
    again, computed = embed_cached(
        ["weather in Rome", "book a flight", "summarize invoice"], "model-a", tmp_path, model
    )
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


def test_weighted_parts_embed_each_distinct_part_once_and_combine_to_unit_vectors(tmp_path):
    model = CountingModel()
    records = [call(f"r{i}", 0, i) for i in range(6)]  # one system prompt, one tool set, five distinct requests
    records.append(records[0].model_copy(update={"record_id": "no-system", "messages": records[0].messages[1:]}))
    settings = TextSettings(weights={"system": 0.3, "tools": 0.5, "request": 1.0})
    vectors, computed = embed_tasks(records, "m", settings, tmp_path, model)
    assert computed == 2 + 5 and len(model.seen) == len(set(model.seen))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    part = {text: model([text], "m")[0] for text in set(model.seen)}
    system, tools, request = (
        records[1].system_prompt,
        task_text(records[1]).split("Tools: ")[1].split("\n")[0],
        records[1].user_request,
    )
    expected = 0.3 * part[system] + 0.5 * part[tools] + part[request]
    assert np.allclose(vectors[1], expected / np.linalg.norm(expected), atol=1e-5)
    no_system = 0.5 * part[tools] + part[records[0].user_request]  # a missing part adds nothing
    assert np.allclose(vectors[-1], no_system / np.linalg.norm(no_system), atol=1e-5)
    assert np.allclose(vectors[0], vectors[5])  # same request (city cycles over five): same task vector
    template, _ = embed_tasks(records[:2], "m", TextSettings(combine="template"), None, model)
    assert np.allclose(template[0], model([task_text(records[0])], "m")[0])
    with pytest.raises(ValueError, match="unknown part"):
        TextSettings(weights={"answer": 1.0})


def test_progress_is_what_the_agent_did_since_the_user_spoke_so_the_steps_of_one_turn_differ():
    from components.core.schema import CallRecord, ChatMessage, ToolCall

    def step(history):
        return CallRecord(
            record_id=f"s{len(history)}",
            messages=[ChatMessage(role="user", content="list my files, then open the first one"), *history],
            response=ChatMessage(role="assistant", content="done"),
        )

    first_call = ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name="ls", arguments="{}")])
    result = ChatMessage(role="tool", tool_call_id="c1", content="a.txt   b.txt " + "x" * 200)
    earlier_turn = [ChatMessage(role="user", content="go home"), first_call.model_copy(), result.model_copy()]
    opening, after_ls = step([]), step([first_call, result])
    settings = TextSettings(max_progress_result_chars=13)
    assert task_text(opening, settings).splitlines()[-1].startswith("Request: ")  # no progress line yet
    assert task_text(after_ls, settings).splitlines()[-1] == "Progress: ls({}) -> a.txt b.txt x"
    # calls of an earlier turn are history, not this turn's progress
    later = CallRecord(
        record_id="later",
        messages=[*earlier_turn, ChatMessage(role="user", content="now open b.txt")],
        response=ChatMessage(role="assistant", content="ok"),
    )
    assert "Progress" not in task_text(later, settings)
