"""Grammar-constrained tool calls: a random-weight model writes only well-formed calls to the offered tools."""

from __future__ import annotations

import json

import jsonschema
import pytest

from components.core.schema import CallRecord, ChatMessage
from components.slm import answer_token_budget, generate, load_model, parse_completion, tool_call_budget
from components.slm.grammar import call_schema, strict_schema, tool_call_grammar

BOOKING_TOOL = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a restaurant table.",
        "parameters": {
            "type": "dict",
            "properties": {
                "guests": {"type": "integer", "description": "How many people.", "minimum": 1, "maximum": 12},
                "slot": {"type": "string", "enum": ["lunch", "dinner"]},
                "terrace": {"type": "boolean"},
            },
            "required": ["guests", "slot"],
        },
    },
}
CANCEL_TOOL = {
    "type": "function",
    "function": {
        "name": "cancel_booking",
        "parameters": {
            "type": "object",
            "properties": {"reference": {"type": "string", "enum": ["A1", "B2"]}},
            "required": ["reference"],
        },
    },
}


def booking_record(index: int, tools: list[dict]) -> CallRecord:
    return CallRecord(
        record_id=f"b{index}",
        tools=tools,
        messages=[ChatMessage(role="user", content=f"Table for {index + 2} at dinner, please.")],
        response=ChatMessage(role="assistant", content="ok"),
    )


def test_strict_schema_maps_python_type_names_and_closes_objects() -> None:
    schema = strict_schema(
        {
            "type": "dict",
            "description": "x",
            "properties": {
                "ratio": {"type": "float", "default": 0.5},
                "pair": {"type": "tuple", "items": {"type": "int"}},
                "anything": {"type": "any"},
            },
            "required": ["ratio", "missing"],
        }
    )
    assert schema == {
        "type": "object",
        "additionalProperties": False,
        "required": ["ratio"],
        "properties": {
            "ratio": {"type": "number"},
            "anything": {},
            "pair": {"type": "array", "items": {"type": "integer", "minimum": -(2**53 - 1), "maximum": 2**53 - 1}},
        },
    }
    # A bound the tool sets itself is kept.
    assert strict_schema(BOOKING_TOOL["function"]["parameters"])["properties"]["guests"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 12,
    }


def test_call_schema_accepts_right_calls_and_refuses_wrong_ones() -> None:
    schema = {k: v for k, v in call_schema([BOOKING_TOOL, CANCEL_TOOL]).items() if k != "x-guidance"}
    jsonschema.validate({"name": "book_table", "arguments": {"guests": 2, "slot": "dinner"}}, schema)
    jsonschema.validate({"name": "cancel_booking", "arguments": {"reference": "A1"}}, schema)
    for wrong in (
        {"name": "book_table", "arguments": {"guests": 2}},  # required slot missing
        {"name": "book_table", "arguments": {"guests": 2, "slot": "brunch"}},  # not in the enum
        {"name": "book_table", "arguments": {"guests": 2, "slot": "lunch", "vip": True}},  # invented
        {"name": "order_taxi", "arguments": {}},
    ):  # not offered
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def _accepts(grammar: str, text: str, tokenizer) -> bool:
    import llguidance
    import llguidance.hf

    matcher = llguidance.LLMatcher(
        llguidance.hf.from_tokenizer(tokenizer), llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
    )
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return matcher.consume_tokens(tokens) and matcher.is_stopped() and not matcher.is_error()


def test_required_grammar_takes_calls_only_and_guided_also_text(tiny_model_dir: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    call = '<tool_call>{"name": "book_table", "arguments": {"guests": 4, "slot": "dinner"}}</tool_call>'
    two_calls = call + "\n" + call.replace("4", "2")
    required, guided = tool_call_grammar([BOOKING_TOOL], True), tool_call_grammar([BOOKING_TOOL], False)
    assert _accepts(required, call, tokenizer) and _accepts(required, two_calls, tokenizer)
    assert _accepts(guided, call, tokenizer) and _accepts(guided, "Sorry, we are closed.", tokenizer)
    assert not _accepts(required, "Sorry, we are closed.", tokenizer)
    assert not _accepts(guided, call.replace('"dinner"', '"brunch"'), tokenizer)
    assert not _accepts(guided, call.replace("}}<", ', "vip": true}}<'), tokenizer)


def test_grammar_bounds_the_calls_per_answer_and_the_digits_of_an_integer(tiny_model_dir: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    call = '<tool_call>{"name": "cancel_booking", "arguments": {"reference": "A1"}}</tool_call>'
    at_most_two, at_most_one = tool_call_grammar([CANCEL_TOOL], True, 2), tool_call_grammar([CANCEL_TOOL], True, 1)
    assert _accepts(at_most_two, call, tokenizer) and _accepts(at_most_two, f"{call}\n{call}", tokenizer)
    assert not _accepts(at_most_two, f"{call}\n{call}\n{call}", tokenizer)
    assert _accepts(at_most_one, call, tokenizer) and not _accepts(at_most_one, f"{call}\n{call}", tokenizer)

    counter = {
        "type": "function",
        "function": {
            "name": "count",
            "parameters": {"type": "dict", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        },
    }
    grammar = tool_call_grammar([counter], True)
    count = '<tool_call>{{"name": "count", "arguments": {{"n": {}}}}}</tool_call>'
    assert _accepts(grammar, count.format(2**53 - 1), tokenizer) and _accepts(grammar, count.format(-7), tokenizer)
    assert not _accepts(grammar, count.format("5" * 30), tokenizer)  # the digit loop a small model can fall into


def test_a_random_model_writes_only_valid_calls_under_the_grammar(tiny_model_dir: str) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    records = [
        booking_record(0, [BOOKING_TOOL]),
        booking_record(1, [BOOKING_TOOL, CANCEL_TOOL]),
        booking_record(2, [CANCEL_TOOL]),
    ]
    free = generate(model, tokenizer, records, max_new_tokens=40, constrain_tool_calls=False)
    # Untrained weights write noise: without the grammar, no call comes out.
    assert not any(parse_completion(g.text).tool_calls for g in free)

    constrained = generate(model, tokenizer, records, max_new_tokens=160, batch_size=2, require_tool_calls=True)
    for record, generation in zip(records, constrained, strict=True):
        message = parse_completion(generation.text)
        assert message.tool_calls and not message.content, generation.text
        schema = {k: v for k, v in call_schema(record.tools).items() if k != "x-guidance"}
        for call in message.tool_calls:
            jsonschema.validate({"name": call.name, "arguments": json.loads(call.arguments)}, schema)


def test_an_answer_stops_once_its_last_allowed_call_is_closed(tiny_model_dir: str) -> None:
    # An enum keeps the random model's values short; without the stop it would write on to the token budget.
    pick = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
                "required": ["colour"],
            },
        },
    }
    model, tokenizer = load_model(tiny_model_dir)
    records = [booking_record(0, [pick]), booking_record(1, [pick])]
    budget = 120
    for generation in generate(
        model, tokenizer, records, max_new_tokens=budget, batch_size=2, require_tool_calls=True, max_tool_calls=1
    ):
        assert generation.text.endswith("</tool_call>"), generation.text
        assert len(parse_completion(generation.text).tool_calls) == 1
        assert generation.completion_tokens < budget


def test_answer_budget_follows_the_longest_answer_up_to_the_cap() -> None:
    assert answer_token_budget([10, 40, 20]) == 76
    assert answer_token_budget([10, 40, 20], cap=50) == 50
    assert answer_token_budget([], cap=96) == 96 and answer_token_budget([]) is None


def test_call_budget_follows_the_answer_with_most_calls() -> None:
    assert tool_call_budget([1, 1, 1]) == 1  # a single-call task cannot loop into a second call
    assert tool_call_budget([1, 2, 0]) == 3 and tool_call_budget([4, 1]) == 6
    assert tool_call_budget([0, 0]) is None and tool_call_budget([]) is None


def test_without_llguidance_generation_is_left_unconstrained(tiny_model_dir: str, monkeypatch, caplog) -> None:
    from transformers import AutoTokenizer

    from components.slm import grammar as constrained

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stop = [tokenizer.eos_token_id]
    import torch

    processor = constrained.make_logits_processor(tokenizer, stop, [[BOOKING_TOOL], None], True)
    prompt = torch.tensor([[tokenizer.eos_token_id]] * 2)
    vocabulary = len(tokenizer)
    masked = processor(prompt, torch.zeros(2, vocabulary))
    allowed = [tokenizer.decode([token]) for token in torch.isfinite(masked[0]).nonzero().flatten().tolist()]
    # A row with tools may only begin a call; a row without tools is left alone.
    assert allowed and all("<tool_call>".startswith(text) or text.startswith("<tool_call>") for text in allowed)
    assert len(allowed) < vocabulary and torch.isfinite(masked[1]).all()
    assert constrained.make_logits_processor(tokenizer, stop, [None, []], True) is None  # no row offers tools
    monkeypatch.setattr(constrained, "available", lambda: False)
    constrained._warn_unconstrained.cache_clear()
    with caplog.at_level("WARNING"):
        assert constrained.make_logits_processor(tokenizer, stop, [[BOOKING_TOOL]], True) is None
    assert "without a grammar" in caplog.text
