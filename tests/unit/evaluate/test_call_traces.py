"""The held-out calls as traces (components/evaluate/call_traces.py): which calls, what each says, who answers it."""

from components.evaluate.call_traces import call_traces, outcome

SURE = {"mean_logprob": -0.01, "min_logprob": -0.1, "name_logprob": -0.02, "value_logprob": -0.05}


def entry(cluster_id: int, promoted: bool = False, selective: dict | None = None) -> dict:
    return {
        "cluster_id": cluster_id,
        "primary_metric": "full_call_match",
        "promoted": promoted,
        "mode": "selective" if selective else ("on" if promoted else "shadow"),
        "selective": selective,
    }


def row(cluster_id: int, index: int, match: float, features: dict | None = None) -> dict:
    return {
        "record_id": f"c{cluster_id}-{index}",
        "cluster_id": cluster_id,
        "request": f"question {index}",
        "llm": "<tool_call>x</tool_call>",
        "slm_base": "no",
        "slm_finetuned": "<tool_call>x</tool_call>" if match else "no",
        "slm_base.latency_ms": 5.0,
        "slm_finetuned.latency_ms": 7.0,
        "slm_base.full_call_match": 0.0,
        "slm_finetuned.full_call_match": match,
        "slm_finetuned.argument_accuracy": match / 2,
        **{f"slm_finetuned.{name}": value for name, value in (features or {}).items()},
    }


def test_calls_are_taken_in_turn_from_each_cluster_up_to_the_cap():
    rows = [row(1, i, 1.0) for i in range(5)] + [row(2, i, 0.0) for i in range(2)]
    traces = call_traces([entry(1), entry(2)], rows, max_traces=4)
    assert [t.record_id for t in traces] == ["c1-0", "c2-0", "c1-1", "c2-1"]
    assert call_traces([entry(1)], rows, max_traces=0) == []
    assert len(call_traces([entry(1), entry(2)], rows, max_traces=200)) == 7


def test_each_trace_carries_the_expectation_a_verdict_per_metric_and_who_answers():
    [promoted] = call_traces([entry(1, promoted=True)], [row(1, 0, 1.0)], 10)
    assert promoted.expected == "<tool_call>x</tool_call>" and promoted.request == "question 0"
    assert promoted.feedback == {"full_call_match": True, "argument_accuracy": 0.5, "slm_base.full_call_match": False}
    assert promoted.route == "slm" and promoted.confidence is None
    assert promoted.tags == {
        "cluster_id": "1",
        "record_id": "c1-0",
        "llm2slm.outcome": "match",
        "llm2slm.mode": "on",
        "llm2slm.route": "slm",
    }
    [shadow] = call_traces([entry(2)], [row(2, 0, 0.0)], 10)
    assert shadow.route == "llm" and shadow.tags["llm2slm.outcome"] == "miss"
    assert shadow.latency_ms == {"slm_base": 5.0, "slm_finetuned": 7.0}


def test_a_selective_gate_accepts_a_call_whose_calibrated_confidence_reaches_its_threshold():
    # P(match) = sigmoid(10 * mean_logprob + 2): 0.87 for a sure answer, 0.0 for an unsure one
    calibrator = {"features": ["mean_logprob"], "coefficients": [10.0], "intercept": 2.0}
    gate = entry(3, selective={"calibrator": calibrator, "threshold": 0.5})
    sure, unsure = row(3, 0, 1.0, SURE), row(3, 1, 0.0, {**SURE, "mean_logprob": -2.0})
    accepted, deferred = call_traces([gate], [sure, unsure], 10)
    assert accepted.route == "slm" and 0.86 < accepted.confidence < 0.88
    assert deferred.route == "llm" and deferred.confidence < 0.5
    assert accepted.tags["llm2slm.confidence"] == f"{accepted.confidence:.3f}"
    assert accepted.features == SURE
    # no threshold (nothing reaches the target): every call goes to the LLM
    [none] = call_traces([entry(3, selective={"calibrator": calibrator, "threshold": None})], [sure], 10)
    assert none.route == "llm"


def test_outcome_names_a_match_a_miss_and_a_partial_answer():
    assert [outcome(v) for v in (1.0, 0.0, 0.4, None)] == ["match", "miss", "partial", "unscored"]
