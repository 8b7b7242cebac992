"""Metrics by output type (components/scoring/metrics.py, components/scoring/tool_calls.py) on hand-written cases."""

import json

import numpy as np
import pytest

from components.core.schema import ChatMessage, ToolCall
from components.scoring.metrics import detect_output_type, embedding_similarity, rouge_l, score_json, score_pairs
from components.scoring.tool_calls import acceptable_from_call, check_call, score_tool_calls


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(name=name, arguments=json.dumps(arguments))


AREA_TOOL = {
    "type": "function",
    "function": {
        "name": "area",
        "parameters": {
            "type": "object",
            "properties": {
                "base": {"type": "number"},
                "height": {"type": "integer"},
                "unit": {"type": "string", "default": "cm"},
                "round": {"type": "boolean"},
            },
            "required": ["base", "height"],
        },
    },
}
TOOLS = [AREA_TOOL]


def full(predicted, expected, tools=TOOLS) -> float:
    return score_tool_calls(predicted, expected, tools)["full_call_match"]


def test_argument_order_does_not_matter():
    expected = [call("area", base=10.0, height=5, unit="m")]
    assert full([ToolCall(name="area", arguments='{"unit": "m", "height": 5, "base": 10.0}')], expected) == 1.0


def test_int_is_accepted_for_a_float_parameter_but_not_the_reverse():
    assert full([call("area", base=10, height=5)], [call("area", base=10.0, height=5)]) == 1.0
    assert full([call("area", base=10.0, height=5.0)], [call("area", base=10.0, height=5)]) == 0.0
    assert (
        check_call(
            call("area", base=10.0, height=5.0),
            "area",
            acceptable_from_call(call("area", base=10.0, height=5), AREA_TOOL["function"]["parameters"]),
            AREA_TOOL["function"]["parameters"],
        )
        == "wrong_value"
    )
    # a number written as a string is a type error, and a bool is not a number
    assert full([call("area", base="10", height=5)], [call("area", base=10.0, height=5)]) == 0.0
    assert full([call("area", base=True, height=5)], [call("area", base=1.0, height=5)]) == 0.0


def test_missing_optional_argument_with_its_default_still_matches():
    # the teacher wrote the default out, the student left it out: same call
    assert full([call("area", base=3.0, height=4)], [call("area", base=3.0, height=4, unit="cm")]) == 1.0
    # ...and the other way round
    assert full([call("area", base=3.0, height=4, unit="cm")], [call("area", base=3.0, height=4)]) == 1.0
    # a non-default value of the optional argument is not the same call
    assert full([call("area", base=3.0, height=4)], [call("area", base=3.0, height=4, unit="m")]) == 0.0
    # an optional argument with no default that the teacher did not give may not be invented
    assert full([call("area", base=3.0, height=4, round=True)], [call("area", base=3.0, height=4)]) == 0.0


def test_missing_required_and_unexpected_arguments_fail():
    parameters = AREA_TOOL["function"]["parameters"]
    reference = acceptable_from_call(call("area", base=3.0, height=4), parameters)
    assert check_call(call("area", base=3.0), "area", reference, parameters) == "missing_required"
    assert (
        check_call(call("area", base=3.0, height=4, colour="red"), "area", reference, parameters)
        == "unexpected_argument"
    )


def test_wrong_function_fails_everything_but_validity():
    scores = score_tool_calls([call("perimeter", base=3.0, height=4)], [call("area", base=3.0, height=4)], TOOLS)
    assert scores == {
        "function_name_accuracy": 0.0,
        "argument_accuracy": 0.0,
        "full_call_match": 0.0,
        "valid_json": 1.0,
        "schema_valid": 0.0,
    }  # not an offered tool


def test_invalid_json_arguments():
    broken = ToolCall(name="area", arguments='{"base": 3.0, "height": 4')
    scores = score_tool_calls([broken], [call("area", base=3.0, height=4)], TOOLS)
    assert scores == {
        "function_name_accuracy": 1.0,
        "argument_accuracy": 0.0,
        "full_call_match": 0.0,
        "valid_json": 0.0,
        "schema_valid": 0.0,
    }


def test_schema_validity_checks_types_and_required_fields():
    assert (
        score_tool_calls([call("area", base=3.0, height=4)], [call("area", base=9.0, height=9)], TOOLS)["schema_valid"]
        == 1.0
    )
    assert (
        score_tool_calls([call("area", base="three", height=4)], [call("area", base=3.0, height=4)], TOOLS)[
            "schema_valid"
        ]
        == 0.0
    )
    assert score_tool_calls([call("area", base=3.0)], [call("area", base=3.0, height=4)], TOOLS)["schema_valid"] == 0.0


def test_ground_truth_with_several_acceptable_values_bfcl_form():
    truth = [("area", {"base": [3.0, 3.5], "height": [4], "unit": ["cm", "centimetres", ""]})]
    assert full([call("area", base=3.5, height=4, unit="Centimetres")], truth) == 1.0
    assert full([call("area", base=3, height=4)], truth) == 1.0  # unit may be absent, 3 -> 3.0
    assert full([call("area", base=3.0, height=4, unit="mm")], truth) == 0.0
    assert full([call("area", base=3.0)], [("area", {"base": [3.0], "height": [4]})], tools=None) == 0.0


def test_nested_objects_and_lists_of_objects():
    tool = {
        "name": "order",
        "parameters": {
            "type": "object",
            "properties": {"item": {"type": "object"}, "lines": {"type": "array", "items": {"type": "object"}}},
        },
    }
    reference = call("order", item={"sku": "A-1", "qty": 2}, lines=[{"sku": "B"}, {"sku": "C"}])
    same = ToolCall(name="order", arguments='{"lines": [{"sku": "b"}, {"sku": "C"}], "item": {"qty": 2, "sku": "a1"}}')
    assert full([same], [reference], [tool]) == 1.0
    swapped = call("order", item={"sku": "A-1", "qty": 2}, lines=[{"sku": "C"}, {"sku": "B"}])
    assert full([swapped], [reference], [tool]) == 0.0


def test_parallel_calls_in_any_order_and_partial_credit():
    expected = [call("area", base=1.0, height=2), call("area", base=3.0, height=4)]
    assert full(list(reversed(expected)), expected) == 1.0
    half = score_tool_calls([call("area", base=1.0, height=2), call("area", base=3.0, height=9)], expected, TOOLS)
    assert half["full_call_match"] == 0.0 and half["argument_accuracy"] == pytest.approx(3 / 4)


def test_structured_json_validity_schema_and_field_match():
    expected = '{"name": "Ada", "age": 36, "tags": ["math", "code"]}'
    assert score_json('{"age": 36.0, "name": " ada ", "tags": ["math", "code"]}', expected) == {
        "json_valid": 1.0,
        "schema_valid": 1.0,
        "field_match": 1.0,
        "exact_match": 1.0,
    }
    partial = score_json('```json\n{"name": "Ada", "age": "36", "tags": ["math"]}\n```', expected)
    assert partial["json_valid"] == 1.0 and partial["schema_valid"] == 0.0  # age should be a number
    assert partial["field_match"] == pytest.approx(2 / 4) and partial["exact_match"] == 0.0
    assert score_json("{name: Ada}", expected)["json_valid"] == 0.0
    explicit = {"type": "object", "required": ["id"]}
    assert score_json('{"name": "Ada"}', expected, schema=explicit)["schema_valid"] == 0.0


def test_free_text_rouge_l_and_embedding_similarity():
    assert rouge_l("the cat sat on the mat", "the cat sat") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert rouge_l("mat the on sat cat", "the cat sat on the mat") < 0.5

    def embed(texts):  # bag of letters: a deterministic stand-in for a sentence embedder
        return np.array([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], dtype=float)

    same, other = embedding_similarity(["cat", "cat"], ["act", "dog"], embed)
    assert same == pytest.approx(1.0) and other == 0.0


def test_score_pairs_per_output_type_with_optional_embedder_and_judge():
    expected = [ChatMessage(role="assistant", content="Paris is the capital.")]
    predicted = [ChatMessage(role="assistant", content="The capital is Paris.")]
    plain = score_pairs(expected, predicted, "text")
    assert set(plain) == {"exact_match", "token_f1", "rouge_l"} and plain["token_f1"] == pytest.approx(1.0)
    judged = score_pairs(
        expected, predicted, "text", embed=lambda t: np.ones((len(t), 3)), judge=lambda reference, answer: 0.75
    )
    assert judged["embedding_similarity"] == pytest.approx(1.0) and judged["judge_score"] == 0.75
    as_json = score_pairs(
        [ChatMessage(role="assistant", content='{"a": 1}')], [ChatMessage(role="assistant", content='{"a": 2}')], "json"
    )
    assert as_json["json_valid"] == 1.0 and as_json["field_match"] == 0.0
    tools = score_pairs(
        [ChatMessage(role="assistant", tool_calls=[call("area", base=1.0, height=2)])],
        [ChatMessage(role="assistant", tool_calls=[call("area", base=1, height=2)])],
        "tool_call",
        tools=[TOOLS],
    )
    assert tools["full_call_match"] == 1.0


def test_output_type_is_detected_from_the_reference_answers():
    tool = ChatMessage(role="assistant", tool_calls=[call("area", base=1.0, height=2)])
    js = ChatMessage(role="assistant", content='{"a": 1}')
    text = ChatMessage(role="assistant", content="hello")
    assert detect_output_type([tool, tool, text]) == "tool_call"
    assert detect_output_type([js, js, text]) == "json"
    assert detect_output_type([text, js]) == "json"  # a tie goes to the stricter type
    assert detect_output_type([text, text, js]) == "text"
    assert detect_output_type([]) == "text"


def test_a_tool_schema_that_is_not_json_schema_leaves_only_json_validity():
    odd = [{"name": "area", "parameters": {"type": "dict", "properties": {"base": {"type": "String"}}}}]
    assert score_tool_calls([call("area", base="x")], [call("area", base="x")], odd)["schema_valid"] == 1.0


def test_list_item_types_follow_bfcl():
    tool = [
        {
            "name": "sort",
            "parameters": {"type": "object", "properties": {"values": {"type": "array", "items": {"type": "number"}}}},
        }
    ]
    floats = [("sort", {"values": [[1.0, 2.0]]})]
    ints = [("sort", {"values": [[1, 2]]})]
    assert full([call("sort", values=[1.0, 2.0])], floats, tool) == 1.0
    assert full([call("sort", values=[1, 2])], floats, tool) == 0.0  # no int -> float promotion inside lists
    assert full([call("sort", values=[1, 2])], ints, tool) == 1.0  # ...unless the answer itself holds ints
