"""S1 readers on real files: streamed chunk lists, multi-turn conversations, mapped JSONL/Parquet, bad input with
line and offset, and incremental re-reads that add nothing twice."""

import json
from pathlib import Path

import pandas as pd
import pytest

from components.collect.ingest import CollectConfig, collect_sources, source_specs
from components.collect.sources import SourceError, parse_source

CFG = CollectConfig(
    prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}},
    mappings={
        "mylog": {
            "messages": "input.prompt",
            "response": "output.text",
            "model": "meta.model",
            "id": "uid",
            "timestamp": "ts",
            "agent": "app",
            "prompt_tokens": "meta.usage.0",
            "completion_tokens": "meta.usage.1",
            "latency_ms": "ms",
            "tools": "input.tools",
        }
    },
    max_line_bytes=1_000_000,
)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    )
    return path


def read(path_spec: str, tmp_path: Path, previous=None, state=None):
    return collect_sources([parse_source(path_spec, tmp_path)], CFG, previous, state)


def chunk(delta, finish=None, **extra):
    return {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_streamed_chunk_list_is_rebuilt_into_text_and_tool_calls(tmp_path):
    streamed = {
        "id": "s-1",
        "agent": "travel-bot",
        "latency_ms": 40.0,
        "request": {
            "model": "gpt-4o",
            "stream": True,
            "tools": [TOOL],
            "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        },
        "response": [
            chunk({"role": "assistant", "content": "Checking "}),
            chunk({"content": "now."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"ci'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
            chunk({}, "tool_calls"),
            {"id": "chatcmpl-s1", "choices": [], "usage": {"prompt_tokens": 200, "completion_tokens": 10}},
        ],
    }
    write_lines(tmp_path / "log.jsonl", [streamed])
    [record] = read("jsonl:log.jsonl", tmp_path).records
    assert (record.record_id, record.source, record.agent, record.model) == (
        "s-1",
        "request_response_stream",
        "travel-bot",
        "gpt-4o",
    )
    assert record.response.content == "Checking now."
    [call] = record.response.tool_calls
    assert (call.id, call.name, call.parsed_arguments()) == ("c1", "get_weather", {"city": "Oslo"})
    assert (record.prompt_tokens, record.completion_tokens, record.latency_ms) == (200, 10, 40.0)
    assert record.cost_usd == pytest.approx((200 * 2.5 + 10 * 10.0) / 1e6)
    assert record.tools == [TOOL]


def test_multi_turn_conversation_gives_one_record_per_assistant_turn(tmp_path):
    conversation = {
        "id": "conv-1",
        "model": "gpt-4o",
        "tools": [TOOL],
        "messages": [
            {"role": "system", "content": "You plan trips."},
            {"role": "user", "content": "Weather in Rome?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "sunny, 21C"},
            {"role": "assistant", "content": "Sunny, 21C."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You're welcome."},
        ],
        "usage": {"prompt_tokens": 300, "completion_tokens": 5},
    }
    write_lines(tmp_path / "chat.jsonl", [conversation])
    records = read("chat.jsonl", tmp_path).records
    assert [r.record_id for r in records] == ["conv-1#m2", "conv-1#m4", "conv-1#m6"]
    assert [len(r.messages) for r in records] == [2, 4, 6]
    first, second, third = records
    assert first.output_kind == "tool_call" and first.response.tool_calls[0].parsed_arguments() == {"city": "Rome"}
    assert second.messages[-1].role == "tool" and second.response.content == "Sunny, 21C."
    assert third.user_request == "Thanks" and third.response.content == "You're welcome."
    assert all(r.source == "chat_messages" and r.model == "gpt-4o" and r.tools == [TOOL] for r in records)
    # The usage logged beside the conversation is its last call's; earlier turns have none (and no cost).
    assert (first.prompt_tokens, first.cost_usd) == (None, None)
    assert (third.prompt_tokens, third.completion_tokens) == (300, 5) and third.cost_usd > 0


def _tool_step(call_id: str, city: str) -> list[dict]:
    return [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": f"{city}: sunny"},
    ]


def test_a_conversation_logged_up_to_a_tool_result_keeps_its_calls_and_reports_the_tail(tmp_path):
    captured_mid_loop = {
        "id": "conv-2",
        "messages": [
            {"role": "user", "content": "Weather in Rome, then Oslo?"},
            *_tool_step("t1", "Rome"),
            *_tool_step("t2", "Oslo"),  # the agent's loop was still running when the log was exported
        ],
    }
    write_lines(tmp_path / "chat.jsonl", [captured_mid_loop])
    result = read("chat.jsonl", tmp_path)
    assert [r.record_id for r in result.records] == ["conv-2#m1", "conv-2#m3"]
    assert [r.response.tool_calls[0].parsed_arguments()["city"] for r in result.records] == ["Rome", "Oslo"]
    [tail] = result.quarantine
    assert tail.line_number == 1 and "messages[4:]" in tail.reason and "stops after a tool message" in tail.reason
    assert "2 call(s) before them kept" in tail.reason and "Oslo" not in tail.reason


def test_every_record_names_its_conversation_so_calls_of_one_meet(tmp_path):
    system = {"role": "system", "content": "You plan trips."}
    first_user = {"role": "user", "content": "Weather in Rome?"}
    answer = {"role": "assistant", "content": "Sunny."}
    first_call = [system, first_user]
    later_call = [system, first_user, *_tool_step("t1", "Rome"), answer, {"role": "user", "content": "And Oslo?"}]

    def request_line(line_id, messages, **fields):
        return {
            "id": line_id,
            "request": {"messages": messages},
            "response": {"choices": [{"message": answer}]},
            **fields,
        }

    lines = [
        request_line("r1", first_call),  # no session logged: grouped by the history's prefix
        request_line("r2", later_call),
        request_line("r3", [system, {"role": "user", "content": "Weather in Lima?"}]),
        request_line("r4", [*first_call, answer, first_user], session_id="sess-9"),  # a session wins
        request_line("r5", [*later_call, answer, first_user], metadata={"trace_id": "tr-3"}),
        {"id": "chat-7", "model": "gpt-4o", "messages": [*first_call, answer, first_user, answer]},  # its own
    ]
    write_lines(tmp_path / "calls.jsonl", lines)
    by_id = {r.record_id: r.conversation_id for r in read("calls.jsonl", tmp_path).records}
    assert by_id["r1"] == by_id["r2"] and by_id["r1"].startswith("conv-") and by_id["r3"] != by_id["r1"]
    assert (by_id["r4"], by_id["r5"], by_id["chat-7#m2"], by_id["chat-7#m4"]) == ("sess-9", "tr-3", "chat-7", "chat-7")
    assert "Rome" not in by_id["r1"]  # a hash, never the text


def test_mapped_jsonl_and_parquet_give_the_same_records(tmp_path):
    row = {
        "uid": "m-1",
        "ts": "2026-11-20T10:00:00Z",
        "app": "faq-bot",
        "ms": 12.5,
        "input": {"prompt": [{"role": "user", "content": "Opening hours?"}], "tools": []},
        "output": {"text": "9 to 5."},
        "meta": {"model": "gpt-4o", "usage": [50, 4]},
    }
    write_lines(tmp_path / "custom.jsonl", [row, {"uid": "m-2", "input": {}}])
    from_jsonl = read("mapped:mylog:custom.jsonl", tmp_path)
    [record] = from_jsonl.records
    assert (record.record_id, record.agent, record.model, record.source) == ("m-1", "faq-bot", "gpt-4o", "mapped:mylog")
    assert record.user_request == "Opening hours?" and record.response.content == "9 to 5."
    assert (record.prompt_tokens, record.completion_tokens, record.latency_ms) == (50, 4, 12.5)
    assert record.timestamp.isoformat() == "2026-11-20T10:00:00+00:00"
    assert record.cost_usd == pytest.approx((50 * 2.5 + 4 * 10.0) / 1e6)
    [bad] = from_jsonl.quarantine
    assert bad.line_number == 2 and "input.prompt" in bad.reason

    # Parquet exports keep nested parts as JSON text or structs: both are read.
    frame = pd.DataFrame(
        [
            {
                "uid": "m-1",
                "ts": "2026-11-20T10:00:00Z",
                "app": "faq-bot",
                "ms": 12.5,
                "input": {"prompt": json.dumps(row["input"]["prompt"]), "tools": "[]"},
                "output": {"text": "9 to 5."},
                "meta": {"model": "gpt-4o", "usage": [50, 4]},
            }
        ]
    )
    frame.to_parquet(tmp_path / "custom.parquet")
    [from_parquet] = read("mapped:mylog:custom.parquet", tmp_path).records
    assert from_parquet.model_dump() == record.model_dump()


def test_a_null_token_count_or_latency_in_parquet_reads_as_unknown(tmp_path):
    def row(uid: str, usage: list, ms: float | None) -> dict:
        return {
            "uid": uid,
            "input": {"prompt": "Opening hours?"},
            "output": {"text": f"answer {uid}"},
            "meta": {"model": "gpt-4o", "usage": usage},
            "ms": ms,
        }

    # One row with counts makes the columns numeric, so the other row's nulls are real Parquet nulls.
    pd.DataFrame([row("m-1", [50, 4], 12.5), row("m-2", [None, None], None)]).to_parquet(tmp_path / "n.parquet")
    result = read("mapped:mylog:n.parquet", tmp_path)
    assert result.quarantine == []
    known, unknown = result.records
    assert (known.prompt_tokens, known.completion_tokens, known.latency_ms) == (50, 4, 12.5)
    assert (unknown.prompt_tokens, unknown.completion_tokens, unknown.latency_ms, unknown.cost_usd) == (None,) * 4


def test_a_nan_token_count_in_a_jsonl_log_reads_as_unknown(tmp_path):
    line = {**valid_line(1), "response": {**valid_line(1)["response"], "usage": {"prompt_tokens": float("nan")}}}
    (tmp_path / "nan.jsonl").write_text(json.dumps(line) + "\n")  # json writes the float as the literal NaN
    result = read("nan.jsonl", tmp_path)
    assert result.quarantine == [] and result.records[0].prompt_tokens is None


def valid_line(n: int) -> dict:
    return {
        "id": f"c-{n}",
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"q{n}"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": f"a{n}"}}]},
    }


def test_bad_input_is_quarantined_with_line_and_offset_and_the_run_goes_on(tmp_path):
    lines = [
        valid_line(1),
        b"{not json",
        {"request": {"model": 5, "messages": [{"role": "user", "content": "x"}]}, "response": {"choices": []}},
        {"request": {"messages": [{"role": "user", "content": "x"}]}},
        {"messages": []},
        {
            "request": {"messages": [{"role": "robot", "content": "x"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": "y"}}]},
        },
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
        b'{"pad": "' + b"x" * 1_200_000 + b'"}',
        valid_line(2),
    ]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    result = read(str(path), tmp_path)
    assert [r.record_id for r in result.records] == ["c-1", "c-2"]
    reasons = {entry.line_number: entry.reason for entry in result.quarantine}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert "not valid JSON" in reasons[2] and "no choices" in reasons[3] and "'response'" in reasons[4]
    assert "non-empty list" in reasons[5] and "request.messages[0]" in reasons[6]
    assert "not UTF-8" in reasons[7] and "over collect.max_line_bytes" in reasons[8]
    data = path.read_bytes()
    for entry in result.quarantine:  # the offset points at the start of the quarantined line
        assert data[entry.offset - 1 : entry.offset] in (b"", b"\n")
        assert data.count(b"\n", 0, entry.offset) == entry.line_number - 1
    assert all(entry.source == f"jsonl:{path}" for entry in result.quarantine)


def test_fifty_megabyte_line_is_skipped_in_bounded_reads(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.write(json.dumps(valid_line(1)).encode() + b"\n")
        handle.write(b'{"messages": "' + b"y" * (50 * 1024 * 1024) + b'"}\n')
        handle.write(json.dumps(valid_line(2)).encode() + b"\n")
    result = collect_sources([parse_source(str(path), tmp_path)], CollectConfig())
    assert [r.record_id for r in result.records] == ["c-1", "c-2"]
    [entry] = result.quarantine
    assert entry.line_number == 2 and "over collect.max_line_bytes" in entry.reason


def test_second_ingestion_adds_zero_records_and_appended_lines_are_read_alone(tmp_path):
    path = write_lines(tmp_path / "calls.jsonl", [valid_line(1), valid_line(2)])
    copy = write_lines(tmp_path / "copy.jsonl", [valid_line(2), {**valid_line(3), "id": "other-id"}])
    specs = [parse_source(str(path), tmp_path), parse_source(str(copy), tmp_path)]
    first = collect_sources(specs, CFG)
    # The same call in two logs is collected once (content hash), whatever its id.
    assert [r.record_id for r in first.records] == ["c-1", "c-2", "other-id"] and first.duplicates_skipped == 1

    second = collect_sources(specs, CFG, first.records, first.state)
    assert second.new_records == 0 and len(second.records) == 3 and second.quarantine == []
    assert second.duplicates_skipped == 0  # nothing was even re-read: the watermarks were at the end

    with path.open("ab") as handle:
        handle.write(json.dumps(valid_line(4)).encode() + b"\n")
    third = collect_sources(specs, CFG, second.records, second.state)
    assert third.new_records == 1 and third.records[-1].record_id == "c-4" and third.duplicates_skipped == 0

    # Without watermarks (state lost) everything is re-read, and the content hash still adds nothing.
    fourth = collect_sources(specs, CFG, third.records, None)
    assert fourth.new_records == 0 and fourth.duplicates_skipped == 5


def test_renamed_duplicate_ids_stay_unique_across_sources_and_runs(tmp_path):
    def call(answer: str) -> dict:
        return {
            **valid_line(1),
            "id": "dup",
            "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]},
        }

    first_log = write_lines(tmp_path / "a.jsonl", [call("a"), call("b")])
    second_log = write_lines(tmp_path / "b.jsonl", [valid_line(2), call("c")])
    specs = [parse_source(str(first_log), tmp_path), parse_source(str(second_log), tmp_path)]
    first = collect_sources(specs, CFG)
    with first_log.open("ab") as handle:
        handle.write(b"".join(json.dumps(call(answer)).encode() + b"\n" for answer in ("d", "e")))
    second = collect_sources(specs, CFG, first.records, first.state)

    answers_by_id = {r.record_id: r.response.content for r in second.records if r.record_id.startswith("dup")}
    assert sorted(answers_by_id.values()) == ["a", "b", "c", "d", "e"]  # five calls, five ids: none aliased
    assert second.duplicate_ids == 2 and first.duplicate_ids == 2
    # Deterministic: reading the same logs afresh names every call the same.
    again = collect_sources(specs, CFG)
    assert {r.record_id: r.response.content for r in again.records if r.record_id.startswith("dup")} == answers_by_id


def test_a_call_made_again_later_is_kept_but_one_call_logged_by_two_sources_is_one(tmp_path):
    def call(record_id: str, when: str | None) -> dict:
        return {**valid_line(1), "id": record_id, "timestamp": when}

    agent_log = write_lines(
        tmp_path / "agent.jsonl",
        [call("a-1", "2026-11-20T10:00:00Z"), call("a-2", "2026-11-20T15:30:00Z")],  # the agent asked twice
    )
    # The proxy saw the first call too, stamped a moment later and without a zone (UTC), under its own id.
    proxy_log = write_lines(tmp_path / "proxy.jsonl", [call("p-1", "2026-11-20T10:00:01.200")])
    result = collect_sources([parse_source(str(agent_log), tmp_path), parse_source(str(proxy_log), tmp_path)], CFG)
    assert [r.record_id for r in result.records] == ["a-1", "a-2"]
    assert (result.repeats_kept, result.duplicates_skipped) == (1, 1)
    assert result.summary()["repeats_kept"] == 1 and result.summary()["records"] == 2
    # A repeat under a taken id is renamed, like any other call logged under a taken id.
    again = write_lines(tmp_path / "again.jsonl", [call("a-1", "2026-11-21T08:00:00Z")])
    later = collect_sources([parse_source(str(again), tmp_path)], CFG, result.records)
    assert later.new_records == 1 and later.records[-1].record_id.startswith("a-1#")


def test_unterminated_last_line_is_read_but_not_passed_by_the_watermark(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text(json.dumps(valid_line(1)) + "\n" + json.dumps(valid_line(2)))
    first = read(str(path), tmp_path)
    assert len(first.records) == 2
    with path.open("a") as handle:
        handle.write("\n" + json.dumps(valid_line(3)) + "\n")
    second = read(str(path), tmp_path, first.records, first.state)
    assert [r.record_id for r in second.records] == ["c-1", "c-2", "c-3"] and second.duplicates_skipped == 1


def test_an_unreadable_first_line_of_a_proxy_store_file_is_quarantined_not_fatal(tmp_path):
    from components.core.secure_store import EncryptedAppendLog

    store = tmp_path / "store"
    store.mkdir()
    # A torn token first (a disk that failed mid-write), then the calls the proxy recorded after it.
    (store / "calls-20261201.jsonl").write_bytes(b"gAAAAABtorn-token\n")
    log = EncryptedAppendLog(store)
    for n in (1, 2):
        log.append("calls-20261201.jsonl", json.dumps(valid_line(n)).encode())
    result = read("proxy-store:store", tmp_path)
    assert [r.record_id for r in result.records] == ["c-1", "c-2"]
    [entry] = result.quarantine
    assert entry.line_number == 1 and entry.offset == 0 and "cannot be decrypted" in entry.reason


def test_a_proxy_store_no_line_of_which_decrypts_is_a_wrong_key(tmp_path):
    from cryptography.fernet import Fernet

    from components.core.secure_store import EncryptedAppendLog, StoreKeyError

    log = EncryptedAppendLog(tmp_path / "store", key=Fernet.generate_key())
    for n in (1, 2, 3, 4):
        log.append(f"calls-2026120{n % 2 + 1}.jsonl", json.dumps(valid_line(n)).encode())
    with pytest.raises(StoreKeyError, match="wrong store key"):
        read("proxy-store:store", tmp_path)


def test_source_specs_and_unreadable_sources(tmp_path):
    specs = source_specs(
        CFG,
        tmp_path,
        ["proxy-store:store", "mlflow:sqlite:///m.db#agent?since=2026-11-01", "mapped:mylog:x.parquet", "plain.jsonl"],
        cwd=tmp_path,
    )
    assert [s.kind for s in specs] == ["proxy-store", "mlflow", "mapped", "jsonl"]
    assert specs[1].location == "sqlite:///m.db" and specs[1].experiment == "agent" and specs[1].since_ms > 0
    assert specs[0].location == str(tmp_path / "store")
    assert source_specs(CFG, tmp_path)[0].location == str(tmp_path / CFG.input)
    for spec, message in [
        ("missing.jsonl", "not found"),
        ("proxy-store:nowhere", "not a directory"),
        ("mapped:unknown:x.jsonl", "no field mapping"),
        ("mlflow:sqlite:///m.db", "EXPERIMENT"),
        ("mlflow:sqlite:///m.db#e?from=1", "unknown option"),
    ]:
        with pytest.raises(SourceError, match=message):
            collect_sources([parse_source(spec, tmp_path)], CFG)
