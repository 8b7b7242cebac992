"""S1: both input forms normalize into one record; bad lines are quarantined with their reason."""

import json

import pytest

from components.collect.ingest import CollectConfig, collect_lines, write_quarantine
from components.core.schema import read_records, write_records

CFG = CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}})

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def request_response_line(**overrides) -> str:
    obj = {
        "id": "call-1",
        "timestamp": "2026-11-20T10:00:00Z",
        "agent": "travel-bot",
        "latency_ms": 812.5,
        "request": {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You plan trips."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            "tools": TOOLS,
        },
        "response": {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "tc1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                            }
                        ],
                    }
                }
            ],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100},
        },
    }
    obj.update(overrides)
    return json.dumps(obj)


def test_request_response_form_is_normalized():
    record = collect_lines([request_response_line()], CFG).records[0]
    assert record.record_id == "call-1"
    assert record.agent == "travel-bot" and record.model == "gpt-4o" and record.source == "request_response"
    assert record.system_prompt == "You plan trips." and record.user_request == "Weather in Paris?"
    assert record.tool_names == ["get_weather"]
    assert record.output_kind == "tool_call"
    assert record.response.tool_calls[0].parsed_arguments() == {"city": "Paris"}
    assert record.prompt_tokens == 1000 and record.latency_ms == 812.5
    assert record.cost_usd == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)


def test_fine_tuning_form_takes_last_assistant_message_as_response():
    line = json.dumps(
        {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}], "tools": []}
    )
    record = collect_lines([line], CFG).records[0]
    assert record.source == "chat_messages"
    assert record.response.content == "Hi!" and record.output_kind == "text"
    assert [m.role for m in record.messages] == ["user"]
    assert record.record_id.startswith("rec-")  # generated when absent...
    assert collect_lines([line], CFG).records[0].record_id == record.record_id  # ...and stable


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"request": {"messages": [{"role": "user", "content": "x"}]}}), "'response'"),
        (json.dumps({"messages": "hello"}), "non-empty list"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "has no assistant response"),
        (json.dumps({"foo": 1}), "neither"),
        (
            request_response_line(response={"choices": [{"message": {"role": "assistant", "content": ""}}]}),
            "neither content nor tool calls",
        ),
        (
            request_response_line(
                response={
                    "choices": [
                        {
                            "message": {
                                "role": "assistant",
                                "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                            }
                        }
                    ]
                }
            ),
            "not a JSON object",
        ),
    ],
)
def test_bad_lines_are_quarantined_with_line_number_and_reason(line, reason):
    result = collect_lines([request_response_line(), line, request_response_line(id="call-2")], CFG)
    assert [r.record_id for r in result.records] == ["call-1", "call-2"]
    assert len(result.quarantine) == 1
    assert result.quarantine[0].line_number == 2
    assert reason in result.quarantine[0].reason


def test_quarantine_file_never_holds_the_raw_line(tmp_path):
    secret_line = '{"messages": "my email is jane@example.com"'
    result = collect_lines([secret_line], CFG)
    path = write_quarantine(result.quarantine, tmp_path / "quarantine.jsonl")
    entry = json.loads(path.read_text())
    assert entry["line_number"] == 1 and entry["reason"]
    assert "jane@example.com" not in path.read_text()


def test_duplicate_ids_are_kept_and_made_unique():
    result = collect_lines([request_response_line(), request_response_line(), request_response_line()], CFG)
    ids = [r.record_id for r in result.records]
    assert ids[0] == "call-1" and all(i.startswith("call-1#") for i in ids[1:]) and len(set(ids)) == 3
    assert result.summary()["duplicate_ids_renamed"] == 2


def test_unknown_model_has_no_cost_rather_than_a_wrong_one():
    line = request_response_line()
    obj = json.loads(line)
    obj["request"]["model"] = "some-private-model"
    assert collect_lines([json.dumps(obj)], CFG).records[0].cost_usd is None


def test_parquet_round_trip_keeps_every_field(tmp_path):
    records = collect_lines([request_response_line(), request_response_line(id="call-2", timestamp=None)], CFG).records
    restored = read_records(write_records(records, tmp_path / "r.parquet"))
    assert [r.model_dump() for r in restored] == [r.model_dump() for r in records]
