import json

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.finetune.augment import AugmentationSettings, augment, with_origin

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert",
        "parameters": {"type": "object", "properties": {"amount": {"type": "integer"}}, "required": ["amount"]},
    },
}


def call(record_id: str, text: str, name: str, arguments: dict) -> CallRecord:
    return CallRecord(
        record_id=record_id,
        source="t",
        messages=[ChatMessage(role="system", content="You help."), ChatMessage(role="user", content=text)],
        tools=[WEATHER, CONVERT],
        response=ChatMessage(role="assistant", tool_calls=[ToolCall(name=name, arguments=json.dumps(arguments))]),
    )


TRAIN = [
    call("a", "Weather in Paris in celsius, please. Paris only.", "get_weather", {"city": "Paris", "unit": "celsius"}),
    call("b", "How warm is Lisbon?", "get_weather", {"city": "Lisbon"}),
    call("c", "Convert 250 dollars", "convert", {"amount": 250}),
    call("d", "Just say hello", "get_weather", {"city": "Oslo"}),  # the value is not in the request
]


def test_substitution_is_consistent_between_the_request_and_the_call():
    examples, report = augment(TRAIN, AugmentationSettings(enabled=True, copies=2, seed=1))
    assert examples and report.examples == len(examples)
    for example in examples:
        arguments = json.loads(example.response.tool_calls[0].arguments)
        request = example.user_request
        for value in arguments.values():
            assert str(value) in request  # every argument value is stated in its new request
        assert example.metadata["origin"] == "augmented" and example.metadata["augmented_from"] in "abc"
    paris = [e for e in examples if e.metadata["augmented_from"] == "a"]
    assert paris and all("Paris" not in e.user_request for e in paris)  # both mentions were replaced
    assert all(json.loads(e.response.tool_calls[0].arguments)["unit"] == "fahrenheit" for e in paris)  # enum member


def test_values_come_from_the_cluster_or_keep_their_format():
    examples, _ = augment(TRAIN, AugmentationSettings(enabled=True, copies=3, seed=2))
    cities = {
        json.loads(e.response.tool_calls[0].arguments)["city"] for e in examples if e.metadata["augmented_from"] == "b"
    }
    assert cities <= {"Paris", "Oslo"}  # other values of the same parameter seen in the cluster
    amounts = [
        json.loads(e.response.tool_calls[0].arguments)["amount"]
        for e in examples
        if e.metadata["augmented_from"] == "c"
    ]
    assert amounts and all(100 <= a <= 999 and a != 250 for a in amounts)  # three digits, like 250


def test_a_call_whose_values_the_request_does_not_state_is_left_out_with_its_reason():
    _, report = augment(TRAIN, AugmentationSettings(enabled=True, copies=2))
    assert report.rejected["no value stated in the request"] >= 1
    examples, _ = augment(TRAIN, AugmentationSettings(enabled=True, copies=2))
    assert not any(e.metadata["augmented_from"] == "d" for e in examples)


def test_no_held_out_text_reaches_the_examples():
    held_out = call("z", "Weather in Reykjavik", "get_weather", {"city": "Reykjavik"})
    examples, _ = augment(TRAIN, AugmentationSettings(enabled=True, copies=5, seed=3))
    assert all("Reykjavik" not in json.dumps(e.model_dump(mode="json")) for e in examples)
    assert held_out.record_id not in {e.metadata["augmented_from"] for e in examples}


def test_off_by_default_and_origins_are_tagged():
    examples, report = augment(TRAIN, AugmentationSettings())
    assert examples == [] and report.examples == 0
    assert {r.metadata["origin"] for r in with_origin(TRAIN)} == {"log"}
