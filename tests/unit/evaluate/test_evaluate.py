"""Scoring, cost, promotion gate and reports of components/evaluate/evaluation.py, on tiny inline data."""

import base64
import re

import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.evaluate.evaluation import (
    EvaluateConfig,
    primary_metric_intervals,
    proportion_interval,
    write_markdown_summary,
    write_report,
)
from components.scoring.costs import latency_p50, llm_cost_per_1k_calls, slm_cost_per_1k_calls
from components.scoring.metrics import PRIMARY_METRIC, score_pairs, score_text, score_tool_calls
from tests.support.records import tool_record


def call(name: str, arguments: str) -> ToolCall:
    return ToolCall(name=name, arguments=arguments)


WEATHER = call("get_weather", '{"city": "Paris", "days": 3}')


def test_identical_calls_score_one_everywhere():
    assert score_tool_calls([WEATHER], [WEATHER]) == {
        "function_name_accuracy": 1.0,
        "argument_accuracy": 1.0,
        "full_call_match": 1.0,
        "valid_json": 1.0,
        "schema_valid": 1.0,
    }


def test_lenient_values_match_case_spaces_punctuation_and_nesting_but_not_types():
    expected = [
        call(
            "book",
            '{"city": "New York", "guests": 2, "price": 5.0, "dates": ["Mon", "Tue"], '
            '"filters": {"pool": true, "stars": 4}}',
        )
    ]
    predicted = [
        call(
            "book",
            '{"city": "  new-york ", "guests": 2, "price": 5, "dates": ["mon", "TUE"], '
            '"filters": {"stars": 4, "pool": true}}',
        )
    ]
    assert score_tool_calls(predicted, expected)["full_call_match"] == 1.0
    # BFCL type checks: a string is not a number, a float is not an int.
    as_string = call("book", predicted[0].arguments.replace('"price": 5', '"price": "5"'))
    assert score_tool_calls([as_string], expected)["full_call_match"] == 0.0
    as_float = call("book", predicted[0].arguments.replace('"guests": 2', '"guests": 2.0'))
    assert score_tool_calls([as_float], expected)["full_call_match"] == 0.0


def test_bool_is_not_a_number_and_list_order_counts():
    assert score_tool_calls([call("f", '{"x": 1}')], [call("f", '{"x": true}')])["full_call_match"] == 0.0
    assert score_tool_calls([call("f", '{"x": [2, 1]}')], [call("f", '{"x": [1, 2]}')])["full_call_match"] == 0.0


def test_parallel_calls_in_another_order_still_match():
    expected = [
        call("play", '{"artist": "Taylor Swift", "duration": 20}'),
        call("play", '{"artist": "Maroon 5", "duration": 15}'),
    ]
    predicted = list(reversed(expected))
    assert score_tool_calls(predicted, expected)["full_call_match"] == 1.0
    assert score_tool_calls(predicted, expected)["argument_accuracy"] == 1.0


def test_wrong_argument_value_fails_full_match_but_keeps_the_name():
    scores = score_tool_calls([call("get_weather", '{"city": "Paris", "days": 4}')], [WEATHER])
    assert scores == {
        "function_name_accuracy": 1.0,
        "argument_accuracy": 0.5,
        "full_call_match": 0.0,
        "valid_json": 1.0,
        "schema_valid": 1.0,
    }


def test_extra_argument_fails_full_match_but_not_argument_accuracy():
    scores = score_tool_calls([call("get_weather", '{"city": "Paris", "days": 3, "unit": "C"}')], [WEATHER])
    assert scores["full_call_match"] == 0.0 and scores["argument_accuracy"] == 1.0


def test_null_argument_counts_as_absent():
    assert (
        score_tool_calls([call("get_weather", '{"city": "Paris", "days": 3, "unit": null}')], [WEATHER])[
            "full_call_match"
        ]
        == 1.0
    )


def test_invalid_json_arguments_never_match():
    for broken in ('{"city": "Paris", "days": 3', "not json", "[1, 2]"):
        scores = score_tool_calls([call("get_weather", broken)], [WEATHER])
        assert scores["full_call_match"] == 0.0 and scores["argument_accuracy"] == 0.0
        assert scores["function_name_accuracy"] == 1.0
    # Not even against an equally broken expectation.
    assert score_tool_calls([call("f", "{oops")], [call("f", "{oops")])["full_call_match"] == 0.0


def test_missing_and_extra_calls_cost_name_accuracy():
    other = call("get_time", '{"city": "Paris"}')
    assert score_tool_calls([WEATHER], [WEATHER, other])["function_name_accuracy"] == 0.5
    assert score_tool_calls([WEATHER, other], [WEATHER])["function_name_accuracy"] == 0.5
    assert score_tool_calls([WEATHER, other], [WEATHER])["full_call_match"] == 0.0
    assert score_tool_calls([], [WEATHER]) == {
        "function_name_accuracy": 0.0,
        "argument_accuracy": 0.0,
        "full_call_match": 0.0,
        "valid_json": 0.0,
        "schema_valid": 0.0,
    }
    assert score_tool_calls([call("get_time", '{"city": "Paris", "days": 3}')], [WEATHER])["argument_accuracy"] == 0.0


def test_argument_accuracy_pairs_same_name_calls_at_best():
    expected = [call("play", '{"artist": "A", "duration": 1}'), call("play", '{"artist": "B", "duration": 2}')]
    predicted = [call("play", '{"artist": "B", "duration": 2}'), call("play", '{"artist": "A", "duration": 9}')]
    assert score_tool_calls(predicted, expected)["argument_accuracy"] == pytest.approx(3 / 4)


def test_text_scores():
    assert score_text("The cat sat.", "the cat  sat") == {"token_f1": 1.0, "exact_match": 1.0, "rouge_l": 1.0}
    scores = score_text("the cat sat on the mat", "the cat sat")
    assert scores["exact_match"] == 0.0
    assert scores["token_f1"] == pytest.approx(2 * (3 / 6) * 1.0 / (3 / 6 + 1.0))
    assert score_text("dog", "cat")["token_f1"] == 0.0
    assert score_text("", "")["token_f1"] == 1.0 and score_text("", "cat")["token_f1"] == 0.0


def test_score_pairs_averages_per_kind():
    expected = [ChatMessage(role="assistant", tool_calls=[WEATHER])] * 2
    predicted = [
        ChatMessage(role="assistant", tool_calls=[WEATHER]),
        ChatMessage(role="assistant", content="I cannot call tools."),
    ]
    scores = score_pairs(expected, predicted, "tool_call")
    assert scores == {
        "function_name_accuracy": 0.5,
        "argument_accuracy": 0.5,
        "full_call_match": 0.5,
        "valid_json": 0.5,
        "schema_valid": 0.5,
    }
    text = score_pairs(
        [ChatMessage(role="assistant", content="yes it is")],
        [ChatMessage(role="assistant", content="Yes, it is!")],
        "text",
    )
    assert text == {"token_f1": 1.0, "exact_match": 1.0, "rouge_l": 1.0}
    assert PRIMARY_METRIC == {"tool_call": "full_call_match", "json": "field_match", "text": "token_f1"}
    with pytest.raises(ValueError):
        score_pairs(expected, predicted[:1], "tool_call")


def record(cost: float | None) -> CallRecord:
    return CallRecord(
        record_id=str(cost),
        messages=[ChatMessage(role="user", content="hi")],
        response=ChatMessage(role="assistant", content="hello"),
        cost_usd=cost,
    )


def test_cost_math():
    assert llm_cost_per_1k_calls([record(0.002), record(0.004), record(None)]) == pytest.approx(3.0)
    assert llm_cost_per_1k_calls([record(None)]) == 0.0
    # 1.8 s per call at 2 USD/h: 1.8 * 2 / 3600 = 0.001 USD per call, 1.0 per 1k calls.
    assert slm_cost_per_1k_calls([1200.0, 2400.0], 2.0) == pytest.approx(1.0)
    assert slm_cost_per_1k_calls([], 2.0) == 0.0
    assert latency_p50([300.0, 100.0, 200.0]) == 200.0 and latency_p50([]) == 0.0


def scores(llm: float, base: float, tuned: float) -> dict:
    return {
        "llm": {"full_call_match": llm},
        "slm_base": {"full_call_match": base},
        "slm_finetuned": {"full_call_match": tuned},
    }


def test_the_evaluation_entry_scores_the_three_systems_and_gates_at_parity():
    from components.evaluate.entry import evaluate_cluster
    from components.evaluate.promotion import PromotionPolicy

    cities = [f"city{i}" for i in range(20)]
    records = [tool_record(f"r{i}", city) for i, city in enumerate(cities)]
    right = [
        (f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}</tool_call>', 100.0) for c in cities
    ]
    wrong = [("It is sunny.", 120.0)] * 20
    cluster = {"cluster_id": 3, "label": "weather", "output_kind": "tool_call", "selected": "smollm2"}
    # 18 of 20 right = 0.90 = parity × the LLM (1.0): promoted; 17 of 20 is not.
    at_parity, _ = evaluate_cluster(cluster, 40, records, wrong, right[:18] + wrong[:2], PromotionPolicy(), 0.10)
    below, _ = evaluate_cluster(cluster, 40, records, wrong, right[:17] + wrong[:3], PromotionPolicy(), 0.10)
    assert at_parity["scores"]["llm"]["full_call_match"] == 1.0
    assert at_parity["scores"]["slm_finetuned"]["full_call_match"] == pytest.approx(0.9)
    assert at_parity["scores"]["slm_base"]["full_call_match"] == 0.0
    assert at_parity["promoted"] and not below["promoted"] and not below["promotion_checks"]["parity"]
    assert at_parity["n_test"] == 20 and at_parity["parity_bar"] == pytest.approx(0.9)
    low, high = at_parity["primary_metric_ci95"]["slm_finetuned"]
    assert low < 0.9 < high
    assert at_parity["cost_per_1k_calls"]["llm"] == pytest.approx(2.0)
    # The SLM's cost: each call's latency at $0.10 an hour; the faster fine-tuned answers cost less.
    assert 0 < at_parity["cost_per_1k_calls"]["slm_finetuned"] < at_parity["cost_per_1k_calls"]["slm_base"]


def test_the_entry_and_the_per_call_rows_come_from_one_parse_and_score_of_each_answer(monkeypatch):
    import components.evaluate.entry as entry_module
    from components.evaluate.promotion import PromotionPolicy

    cities = ["oslo", "rome", "lima", "kyiv"]
    records = [tool_record(f"r{i}", city) for i, city in enumerate(cities)]
    right = [
        (f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}</tool_call>', 100.0) for c in cities
    ]
    wrong = [("It is sunny.", 120.0)] * 4
    parsed = []
    real_parse = entry_module.parse_completion
    monkeypatch.setattr(entry_module, "parse_completion", lambda text: parsed.append(text) or real_parse(text))
    cluster = {"cluster_id": 3, "label": "weather", "output_kind": "tool_call", "selected": "smollm2"}

    entry, rows = entry_module.evaluate_cluster(
        cluster, 8, records, wrong, right[:3] + wrong[:1], PromotionPolicy(), 0.1
    )

    assert len(parsed) == 2 * len(records)  # each SLM answer once, for the figures and the rows alike
    assert [row["slm_finetuned.full_call_match"] for row in rows] == [1.0, 1.0, 1.0, 0.0]
    for system in ("slm_base", "slm_finetuned"):
        for metric, mean in entry["scores"][system].items():
            assert mean == pytest.approx(sum(row[f"{system}.{metric}"] for row in rows) / len(rows))


def test_evaluate_config_takes_the_gate_and_the_serving_price_from_their_one_place():
    from pathlib import Path

    from components.core.config import load_params
    from flows.steps import load_step

    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml")
    cfg = load_step(params, "evaluate")
    assert cfg.promotion.parity == params["promotion"]["parity"]
    select = params["select"]
    assert cfg.slm_hourly_cost_usd == select["hardware_prices_usd_per_hour"][select["serving_hardware"]]
    assert load_step(params, "discover").min_test_calls == params["promotion"]["min_test_calls"]
    with pytest.raises(ValueError, match="top-level promotion"):
        load_step({**params, "evaluate": {**params["evaluate"], "promotion": {"min_gain_over_base": 0.0}}}, "evaluate")
    with pytest.raises(ValueError, match="serving_hardware"):
        load_step({**params, "evaluate": {**params["evaluate"], "slm_hourly_cost_usd": 0.4}}, "evaluate")
    with pytest.raises(ValueError):
        EvaluateConfig.model_validate({**params["evaluate"], "slm_hourly_cost": 1.0})


def entry(cluster_id: int, label: str, promoted: bool) -> dict:
    return {
        "cluster_id": cluster_id,
        "label": label,
        "n_train": 40,
        "n_test": 10,
        "output_kind": "tool_call",
        "primary_metric": "full_call_match",
        "scores": {
            s: {"function_name_accuracy": 0.9, "argument_accuracy": 0.8, "full_call_match": v}
            for s, v in (("llm", 1.0), ("slm_base", 0.2), ("slm_finetuned", 0.7))
        },
        "cost_per_1k_calls": {"llm": 3.1, "slm_base": 0.05, "slm_finetuned": 0.06},
        "latency_ms_p50": {"slm_base": 450.0, "slm_finetuned": 480.0},
        "promoted": promoted,
        "promotion_reason": "promoted: because <reasons>" if promoted else "not promoted",
        "primary_metric_ci95": {"llm": [0.722, 1.0], "slm_base": [0.057, 0.51], "slm_finetuned": [0.397, 0.892]},
    }


def test_a_proportion_on_few_calls_gets_a_wide_wilson_interval():
    assert proportion_interval(0.5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert proportion_interval(0.0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)  # never below 0
    assert proportion_interval(1.0, 100)[0] == pytest.approx(0.963, abs=1e-3) and proportion_interval(1.0, 0) is None
    scores = {"llm": {"full_call_match": 1.0, "token_f1": 1.0}, "slm_finetuned": {"full_call_match": 0.4}}
    intervals = primary_metric_intervals(scores, "full_call_match", 10)
    assert (
        set(intervals) == {"llm", "slm_finetuned"}
        and intervals["slm_finetuned"][0] < 0.4 < intervals["slm_finetuned"][1]
    )
    assert primary_metric_intervals(scores, "token_f1", 10) is None  # a mean of fractions is not a proportion


def test_report_is_self_contained_html_with_every_cluster_and_system(tmp_path):
    entries = [entry(0, "weather lookups", True), entry(3, "music & playback", False)]
    path = write_report(entries, tmp_path / "reports" / "report.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    for expected in (
        "weather lookups",
        "music &amp; playback",
        "llm",
        "slm_base",
        "slm_finetuned",
        "&lt;reasons&gt;",
        "3.1000",
        "480",
        "0.700 [0.40, 0.89]",
    ):
        assert expected in page
    image = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert image and base64.b64decode(image.group(1)).startswith(b"\x89PNG")
    assert "<script" not in page and "http" not in page


def test_markdown_summary_has_a_row_per_cluster():
    summary = write_markdown_summary([entry(0, "weather | lookups", True), entry(3, "music", False)])
    rows = summary.strip().splitlines()
    assert len(rows) == 4 and rows[2].startswith(
        "| 0 | weather / lookups | full_call_match | 1.000 (reference) | 0.200 [0.06, 0.51] | 0.700 [0.40, 0.89]"
    )
    assert rows[2].endswith("| yes |") and rows[3].endswith("| no |")
