"""Confidence features of an SLM answer: the spans they read (pure), and the log-probabilities generation returns."""

import math

import pytest

from components.slm.confidence import FEATURES, answer_confidence, call_spans

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}</tool_call>'


def test_the_spans_are_the_function_name_and_each_argument_value():
    names, values = call_spans(CALL + "\n" + CALL.replace("Paris", "Oslo"))
    texts = [(CALL + "\n" + CALL.replace("Paris", "Oslo"))[a:b] for a, b in names + values]
    assert texts == ['"get_weather"', '"get_weather"', '"Paris"', "3", '"Oslo"', "3"]
    assert call_spans("It is sunny.") == ([], [])
    # A truncated call keeps what was read before the fault.
    names, values = call_spans('<tool_call>{"name": "ls", "arguments": {"path": "/tm')
    assert len(names) == 1 and values == []


def one_token_per_char(text: str) -> list[int]:
    return list(range(len(text) + 1))


def test_features_aggregate_the_tokens_of_the_name_and_of_each_value():
    text = CALL
    logprobs = [0.0] * len(text)
    name_start = text.index("get_weather")
    logprobs[name_start] = -2.0  # the tool choice
    paris = text.index("Paris")
    for i in range(paris, paris + 5):
        logprobs[i] = -0.7  # mean over the value's 7 characters ("Paris" quoted) = -0.5
    features = answer_confidence(text, one_token_per_char(text), logprobs)
    assert set(features) == set(FEATURES)
    assert features["name_logprob"] == -2.0
    assert features["value_logprob"] == pytest.approx(-0.5)  # the least of "Paris" (-0.5) and 3 (0.0)
    assert features["min_logprob"] == -2.0
    assert features["mean_logprob"] == pytest.approx(sum(logprobs) / len(logprobs))


def test_a_text_answer_takes_the_sequence_minimum_for_its_call_features_and_an_empty_one_has_none():
    features = answer_confidence("It is sunny.", one_token_per_char("It is sunny."), [-0.1] * 11 + [-3.0])
    assert features["name_logprob"] == features["value_logprob"] == features["min_logprob"] == -3.0
    assert answer_confidence("", [0], []) is None


def test_generation_returns_confidence_renormalised_over_the_grammar_and_batched_equals_alone(tiny_model_dir, records):
    from components.slm.generation import generate
    from components.slm.loading import load_model

    model, tokenizer = load_model(tiny_model_dir)
    batched = generate(model, tokenizer, records[:4], max_new_tokens=24, batch_size=4)
    alone = [generate(model, tokenizer, [r], max_new_tokens=24, batch_size=1)[0] for r in records[:4]]
    for together, single in zip(batched, alone):
        assert together.text == single.text
        assert set(together.confidence) == set(FEATURES)
        for name in FEATURES:
            assert together.confidence[name] == pytest.approx(single.confidence[name], abs=1e-3)
            assert together.confidence[name] <= 0.0
    assert any(g.confidence["mean_logprob"] < 0 for g in batched)  # an untrained model is not sure of itself


def test_each_step_keeps_the_chosen_tokens_logprob_renormalised_over_the_allowed_tokens():
    import torch

    from components.slm.generation import TokenLogprobs

    recorder = TokenLogprobs()
    scores = torch.tensor([[1.0, 2.0, float("-inf"), float("-inf")], [0.0, 0.0, 0.0, 0.0]])
    assert recorder(None, scores) is scores  # it changes no score
    recorder(None, torch.tensor([[5.0, float("-inf"), float("-inf"), float("-inf")], [0.0, 1.0, 2.0, 3.0]]))
    assert recorder.row(0, 2) == pytest.approx([2 - math.log(math.e + math.e**2), 0.0])  # masked tokens don't count
    assert recorder.row(1, 1) == pytest.approx([math.log(0.25)])
