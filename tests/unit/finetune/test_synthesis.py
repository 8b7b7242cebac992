import json

import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.anonymize import anonymize_records
from components.finetune.synthesis import SynthesisSettings, TeacherError, synthesize
from tests.support.anonymizer_fixture import CFG, shared_anonymizer
from tests.support.fake_openai import serve_in_thread
from tests.support.fake_teacher import fake_teacher_app

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TRAIN = [
    CallRecord(
        record_id=f"t{i}",
        source="t",
        messages=[ChatMessage(role="system", content="You are a weather bot."), ChatMessage(role="user", content=q)],
        tools=[WEATHER],
        response=ChatMessage(
            role="assistant", tool_calls=[ToolCall(name="get_weather", arguments=json.dumps({"city": c}))]
        ),
    )
    for i, (q, c) in enumerate([("What is the weather in Paris today?", "Paris"), ("Is it raining in Oslo?", "Oslo")])
]
HELD_OUT = ["Will it snow in Denver tomorrow morning?"]


def anonymize(records):
    return anonymize_records(records, CFG, anonymizer=shared_anonymizer())[0]


def settings(url: str, **overrides) -> SynthesisSettings:
    return SynthesisSettings(
        enabled=True, base_url=f"{url}/v1", model="teacher", **{"examples_per_cluster": 10, **overrides}
    )


def test_every_kind_of_bad_teacher_output_is_rejected_with_its_reason_and_good_ones_are_kept_anonymized():
    script = [
        ("How hot is it in Lisbon right now?", "good", "Lisbon"),
        ("Weather for Madrid this weekend please", "malformed", "Madrid"),
        ("Forecast for Rome on Friday", "unoffered", "Rome"),
        ("Should I bring an umbrella in Vienna?", "ungrounded", "Vienna"),
        ("Temperature in Prague, in celsius", "schema", "Prague"),
        ("Tell me about the clouds over Athens", "text", "Athens"),
        ("Will it snow in Denver tomorrow morning?", "good", "Denver"),  # a held-out request, verbatim
        ("What is the weather in Paris today?", "good", "Paris"),  # a training request, verbatim
        ("I am john.doe@example.com, is it windy in Dublin?", "good", "Dublin"),
    ]
    app = fake_teacher_app(script, fail_first=1)
    with serve_in_thread(app) as url:
        kept, report = synthesize(
            TRAIN, HELD_OUT, settings(url, examples_per_cluster=2, max_calls=40), anonymize, sleep=lambda s: None
        )
    assert report.rejected == {
        "arguments are not valid JSON": 1,
        "tool not offered": 1,
        "argument value not grounded in the request": 1,
        "arguments fail the tool schema": 1,
        "answer is not a tool call": 1,
        "near-duplicate of a training or held-out request": 2,
    }
    assert len(kept) == report.kept == 2
    assert {r.metadata["origin"] for r in kept} == {"teacher"}
    assert "john.doe@example.com" not in json.dumps([r.model_dump(mode="json") for r in kept])  # S2 ran on it
    assert kept[0].messages[0].content == "You are a weather bot."  # asked exactly as the agent's LLM is
    answering = [body for body in app.state.calls["seen"] if body.get("tools")]
    assert answering[0]["tools"] == [WEATHER]
    request_prompts = " ".join(json.dumps(b) for b in app.state.calls["seen"] if not b.get("tools"))
    assert "Paris" in request_prompts and "Denver" not in request_prompts  # seeds are training requests only
    assert report.calls == 2 * 9 - 2  # near-duplicates are never answered; the 500 was retried, not counted


def test_budgets_stop_the_cluster_and_say_which():
    script = [("Weather in Lisbon?", "text", "Lisbon")]
    with serve_in_thread(fake_teacher_app(script)) as url:
        _, by_calls = synthesize(TRAIN, [], settings(url, max_calls=6), anonymize)
        _, by_cost = synthesize(TRAIN, [], settings(url, max_cost_usd=0.0005, max_calls=100), anonymize)
    assert by_calls.stopped_by == "calls budget" and by_calls.calls == 6
    assert by_cost.stopped_by == "cost budget" and by_cost.cost_usd >= 0.0005


def test_a_teacher_that_keeps_failing_is_an_error_after_its_retries():
    with serve_in_thread(fake_teacher_app([("x", "good", "x")], fail_first=100)) as url:
        with pytest.raises(TeacherError, match="after 3 attempts"):
            synthesize(TRAIN, [], settings(url, max_retries=2), anonymize, sleep=lambda s: None)


def test_off_unless_enabled():
    kept, report = synthesize(TRAIN, [], SynthesisSettings(), anonymize)
    assert kept == [] and report.calls == 0
