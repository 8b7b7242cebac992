"""S4: constraints skip candidates with a reason; the best candidate per cluster is picked on held-out calls."""

import json

import pandas as pd

from components.schema import CallRecord, ChatMessage, ToolCall
from components.select import Candidate, SelectConfig, benchmark_candidates


def call(record_id: str, city: str) -> CallRecord:
    return CallRecord(
        record_id=record_id, messages=[ChatMessage(role="user", content=f"weather in {city}?")],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        response=ChatMessage(role="assistant", tool_calls=[ToolCall(name="get_weather",
                                                                    arguments=json.dumps({"city": city}))]),
    )


RECORDS = {f"r{i}": call(f"r{i}", city) for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima"])}
SPLITS = pd.DataFrame({"record_id": list(RECORDS), "cluster_id": [0, 0, 0, 0],
                       "split": ["train", "train", "test", "test"]})
CLUSTERS = [{"cluster_id": 0, "label": "weather", "output_kind": "tool_call", "convert": True},
            {"cluster_id": 1, "label": "chit-chat", "output_kind": "text", "convert": False}]


def parse(text: str) -> ChatMessage:
    name, city = text.split(":")
    return ChatMessage(role="assistant", tool_calls=[ToolCall(name=name, arguments=json.dumps({"city": city}))])


def answerer(calls_seen: list):
    def answer(candidate: Candidate, records: list[CallRecord]):
        calls_seen.append((candidate.name, [r.record_id for r in records]))
        if candidate.name == "broken":
            raise OSError("weights not found")
        right = candidate.name == "good"
        return [(f"get_weather:{json.loads(r.response.tool_calls[0].arguments)['city'] if right else 'Nowhere'}",
                 10.0) for r in records]
    return answer


def test_constraints_skip_and_best_candidate_wins():
    cfg = SelectConfig(candidates=[
        Candidate(ref="a", name="weak", licence="MIT", parameters_m=100),
        Candidate(ref="b", name="good", licence="Apache-2.0", parameters_m=300),
        Candidate(ref="c", name="closed", licence="Proprietary", parameters_m=50),
        Candidate(ref="d", name="huge", licence="MIT", parameters_m=70000),
        Candidate(ref="e", name="broken", licence="MIT", parameters_m=10),
    ])
    seen: list = []
    result = benchmark_candidates(RECORDS, CLUSTERS, SPLITS, cfg, answerer(seen), parse)
    status = {c["name"]: (c["status"], c["reason"]) for c in result.leaderboard["candidates"]}
    assert status["closed"][0] == "skipped" and "licence" in status["closed"][1]
    assert status["huge"][0] == "skipped" and "exceed" in status["huge"][1]
    assert status["broken"][0] == "skipped" and "weights not found" in status["broken"][1]
    # only held-out calls of the cluster marked for conversion are answered, only by admissible candidates
    assert seen == [("weak", ["r2", "r3"]), ("good", ["r2", "r3"]), ("broken", ["r2", "r3"])]
    [cluster] = result.leaderboard["clusters"]
    assert cluster["selected"] == "good" and cluster["selected_ref"] == "b"
    scores = {r["candidate"]: r["scores"]["full_call_match"] for r in cluster["results"]}
    assert scores == {"weak": 0.0, "good": 1.0}
    assert set(result.predictions.candidate) == {"weak", "good"}
    assert len(result.predictions) == 4


def test_tie_goes_to_the_smaller_model():
    cfg = SelectConfig(candidates=[Candidate(ref="big", name="good", licence="MIT", parameters_m=900)])
    small = Candidate(ref="small", name="good", licence="MIT", parameters_m=100)
    cfg = SelectConfig(candidates=[cfg.candidates[0], small])
    result = benchmark_candidates(RECORDS, CLUSTERS, SPLITS, cfg, answerer([]), parse)
    assert result.leaderboard["clusters"][0]["selected_ref"] == "small"
