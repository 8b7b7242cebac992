"""The refresh's comparison entry (components/evaluate/comparison.py) on tiny inline data: scores on the fresh and
regression calls from one generation pass, S4's base result, the gate against champion and base, the entry."""

import pytest

from components.core.clusters import ClusterSummary
from components.core.schema import CallRecord
from components.evaluate.comparison import (
    comparison_entry,
    comparison_rows,
    judge_challenger,
    score_fresh_and_regression,
    selected_base_result,
)
from components.evaluate.promotion import PromotionPolicy
from tests.support.records import tool_record

POLICY = PromotionPolicy(parity=0.5, min_test_calls=2, min_gain_over_champion=0.1)
CLUSTER = ClusterSummary(cluster_id=4, label="weather", size=6, output_kind="tool_call")


def right(record: CallRecord, latency: float = 100.0) -> tuple[str, float]:
    call = record.response.tool_calls[0]
    return f'<tool_call>{{"name": "{call.name}", "arguments": {call.arguments}}}</tool_call>', latency


WRONG = ("It is sunny.", 50.0)
FRESH = [tool_record("f1", "oslo"), tool_record("f2", "rome"), tool_record("f3", "lima"), tool_record("f4", "kyiv")]
REGRESSION = [tool_record("g1", "bern"), tool_record("g2", "riga")]


def test_one_pass_over_fresh_and_regression_calls_scores_each_set_apart():
    answers = [right(FRESH[0]), right(FRESH[1]), right(FRESH[2]), WRONG, WRONG, right(REGRESSION[1], 7.0)]
    result = score_fresh_and_regression(FRESH, REGRESSION, answers, "tool_call")
    assert result["scores"]["full_call_match"] == pytest.approx(0.75)
    assert result["regression_scores"]["full_call_match"] == pytest.approx(0.5)
    assert result["latencies_ms"] == [100.0, 100.0, 100.0, 50.0]  # the fresh calls' only
    assert score_fresh_and_regression(FRESH, [], answers[:4], "tool_call")["regression_scores"] is None


def test_the_base_result_is_s4s_selected_candidate():
    ranked = {"selected": "b", "results": [{"candidate": "a", "scores": {}}, {"candidate": "b", "scores": {"x": 1}}]}
    assert selected_base_result(ranked) == {"candidate": "b", "scores": {"x": 1}}
    assert selected_base_result({"selected": "c", "results": ranked["results"]}) is None
    assert selected_base_result(None) is None


def measured(challenger_score: float, champion_score: float | None, regression=(None, None)) -> dict:
    challenger = {
        "scores": {"full_call_match": challenger_score},
        "regression_scores": None if regression[0] is None else {"full_call_match": regression[0]},
        "latencies_ms": [100.0, 100.0],
    }
    champion = (
        None
        if champion_score is None
        else {
            "version": "3",
            "scores": {"full_call_match": champion_score},
            "regression_scores": None if regression[1] is None else {"full_call_match": regression[1]},
            "latencies_ms": [200.0, 200.0],
        }
    )
    base = {"candidate": "tiny", "scores": {"full_call_match": 0.25}, "latency_ms_p50": 300.0}
    return {"challenger": challenger, "champion": champion, "base": base}


def test_the_gate_takes_the_llm_the_champion_and_the_regression_set():
    better = judge_challenger(FRESH, "tool_call", measured(0.75, 0.5, (1.0, 1.0)), POLICY)
    assert better.gate.llm == 1.0 and better.gate.n_test == 4 and better.gate.champion == 0.5
    assert better.decision.promote and better.decision.checks["no_regression"]
    regressed = judge_challenger(FRESH, "tool_call", measured(0.75, 0.5, (0.5, 1.0)), POLICY)
    assert not regressed.decision.promote and not regressed.decision.checks["no_regression"]
    first = judge_challenger(FRESH, "tool_call", measured(0.5, None), POLICY)  # no champion: against the base
    assert first.gate.base == 0.25 and first.decision.checks == {
        "enough_test_calls": True,
        "parity": True,
        "beats_base": True,
    }


def test_the_comparison_entry_holds_every_system_and_the_registered_version():
    systems = measured(0.75, 0.5, (1.0, 1.0))
    verdict = judge_challenger(FRESH, "tool_call", systems, POLICY)
    model = {"n_train": 12}
    entry = comparison_entry(
        CLUSTER, model, FRESH, REGRESSION, systems, verdict, {"name": "llm2slm-cluster-4", "version": "5"}, 3.6
    )
    assert entry["cluster_id"] == 4 and entry["primary_metric"] == "full_call_match"
    assert (entry["n_test"], entry["n_regression"], entry["n_train"]) == (4, 2, 12)
    assert entry["promoted"] and entry["reason"] == verdict.decision.reason
    assert entry["registered_model"] == {"name": "llm2slm-cluster-4", "version": "5", "alias": "champion"}
    # $3.60 an hour is $0.001 a second: 100 ms a call costs $0.0001, $0.1 per 1k calls.
    assert entry["systems"]["llm"] == {
        "score": 1.0,
        "cost_per_1k_calls": pytest.approx(2.0),
        "regression_score": None,
        "version": None,
    }
    assert entry["systems"]["challenger"] == {
        "score": 0.75,
        "cost_per_1k_calls": pytest.approx(0.1),
        "regression_score": 1.0,
        "version": "5",
    }
    assert entry["systems"]["champion"]["cost_per_1k_calls"] == pytest.approx(0.2)
    assert entry["systems"]["champion"]["version"] == "3"
    assert entry["systems"]["slm_base"] == {
        "score": 0.25,
        "cost_per_1k_calls": pytest.approx(0.3),
        "regression_score": None,
        "version": None,
    }
    assert [row["system"] for row in comparison_rows(entry)] == ["llm", "slm_base", "champion", "challenger"]


def test_a_first_challenger_that_fails_the_gate_stays_challenger_without_a_champion_row():
    systems = {**measured(0.25, None), "base": None}
    verdict = judge_challenger(FRESH, "tool_call", systems, POLICY)
    entry = comparison_entry(CLUSTER, {"n_train": 3}, FRESH, [], systems, verdict, {"name": "n", "version": "1"}, 1.0)
    assert not entry["promoted"] and entry["registered_model"]["alias"] == "challenger"
    assert entry["systems"]["champion"] is None and entry["systems"]["slm_base"] is None
    assert [row["system"] for row in comparison_rows(entry)] == ["llm", "challenger"]


def sure(mean_logprob: float) -> dict[str, float]:
    return {"mean_logprob": mean_logprob, "min_logprob": mean_logprob, "name_logprob": -0.1, "value_logprob": -0.1}


def test_a_selective_champion_and_its_challenger_are_compared_on_calls_served_at_parity():
    fresh = [tool_record(f"s{i}", city) for i, city in enumerate(["oslo", "rome", "lima", "kyiv", "bern"] * 4)]
    policy = PromotionPolicy(parity=0.9, min_test_calls=4, min_gain_over_champion=0.05, selective_folds=4)
    # The challenger is right on half the calls and knows which (its confidence separates them); the champion is
    # right more often (0.6) but equally sure of every answer, so none of its calls is served at parity.
    challenger_right = [i % 2 == 0 for i in range(len(fresh))]
    champion_right = [i % 5 < 3 for i in range(len(fresh))]

    def system(rights: list[bool], confidence: list[dict]) -> dict:
        answers = [(*right(r)[:1], 100.0, c) if ok else (*WRONG, c) for r, ok, c in zip(fresh, rights, confidence)]
        return {"version": "3", **score_fresh_and_regression(fresh, [], answers, "tool_call")}

    systems = {
        "challenger": system(challenger_right, [sure(-0.01 if ok else -3.0) for ok in challenger_right]),
        "champion": system(champion_right, [sure(-0.5)] * len(fresh)),
        "base": None,
    }
    verdict = judge_challenger(fresh, "tool_call", systems, policy)
    challenger, champion = verdict.selective["challenger"], verdict.selective["champion"]
    assert verdict.gate.challenger < verdict.gate.champion  # raw accuracy alone would keep the champion
    assert challenger["accepted_accuracy"] >= 0.9 and challenger["coverage"] >= policy.min_coverage
    assert champion["accepted_calls"] == 0  # no threshold reaches parity on an uninformative confidence
    assert verdict.served_at_parity == {"challenger": challenger["coverage"], "champion": 0.0}
    assert verdict.gate.served_at_parity == (challenger["coverage"], 0.0)
    assert verdict.decision.checks["beats_champion"] and verdict.decision.mode == "selective"
    assert "calls served at parity" in verdict.decision.reason
    entry = comparison_entry(CLUSTER, {"n_train": 9}, fresh, [], systems, verdict, {"name": "n", "version": "4"}, 1.0)
    assert entry["mode"] == "selective" and entry["served_at_parity"] == verdict.served_at_parity
    assert (
        entry["selective"]["challenger"]["threshold"] is not None
        and "risk_coverage" not in entry["selective"]["challenger"]
    )
