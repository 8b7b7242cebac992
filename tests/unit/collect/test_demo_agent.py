"""The demo agent log of components/collect/demo_agent.py: BFCL's multi-turn conversations run against the real
API classes of the pinned wheel, then read back by S1."""

import json
from collections import Counter

import pytest

from components.collect.demo_agent import (
    SYSTEM_PROMPT,
    ApiSession,
    build_agent_log,
    load_api_classes,
    load_conversations,
    parse_call_string,
)
from components.collect.demo_parts import FAKE_PEOPLE, DemoDataConfig
from components.collect.ingest import CollectConfig, collect_lines

CFG = DemoDataConfig(conversations=16, chat_form_share=0.5, truncated_share=0.5, pii_share=0.5, malformed_lines=3)
PRICES = CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}})


@pytest.fixture(scope="module")
def log():
    return build_agent_log(CFG)


@pytest.fixture(scope="module")
def collected(log):
    return collect_lines(log[0], PRICES)


def test_call_strings_are_parsed_never_evaluated():
    assert parse_call_string("mv(source='a.pdf', destination='temp')") == (
        "mv",
        [],
        {"source": "a.pdf", "destination": "temp"},
    )
    assert parse_call_string("sort('final_report.pdf')") == ("sort", ["final_report.pdf"], {})
    assert parse_call_string("f(x=-1.5, y=(1, 2), z=[{'a': None}])")[2] == {"x": -1.5, "y": (1, 2), "z": [{"a": None}]}
    for unsafe in ["__import__('os').system('ls')", "f(x=open('/etc/passwd'))", "f(**kw)", "x = 1", "f("]:
        with pytest.raises(ValueError):
            parse_call_string(unsafe)


def test_the_api_classes_run_the_ground_truth_for_real():
    classes = load_api_classes()
    assert set(classes) == {
        "GorillaFileSystem",
        "MathAPI",
        "MessageAPI",
        "TwitterAPI",
        "TicketAPI",
        "TradingBot",
        "TravelAPI",
        "VehicleControlAPI",
    }
    first = next(c for c in load_conversations() if c["id"] == "multi_turn_base_0")
    session = ApiSession(classes, first["involved_classes"], first["initial_config"])
    run = lambda call: session.run(call[0], session.named_arguments(*call))  # noqa: E731
    assert json.loads(run(parse_call_string("cd(folder='document')"))) == {"current_working_directory": "document"}
    assert "final_report.pdf" in run(parse_call_string("ls()"))
    assert json.loads(run(parse_call_string("cd(folder='nowhere')")))["error"]  # a failing call's error is logged
    assert session.named_arguments("sort", ["final_report.pdf"], {}) == {"file_name": "final_report.pdf"}
    with pytest.raises(ValueError, match="no tool 'rm_rf'"):
        session.named_arguments("rm_rf", [], {})


def test_s1_reads_every_call_and_quarantines_the_broken_lines_and_the_unanswered_tails(log, collected):
    lines, groups = log
    assert sorted(r.record_id for r in collected.records) == sorted(g["record_id"] for g in groups)
    reasons = Counter("stops after a tool message" in q.reason for q in collected.quarantine)
    truncated = round(CFG.truncated_share * round(CFG.chat_form_share * CFG.conversations))
    assert reasons == {True: truncated, False: CFG.malformed_lines}
    assert {r.source for r in collected.records} == {"request_response", "chat_messages"}
    assert all(r.agent == "bfcl-multi-turn-agent" and r.model == "gpt-4o" for r in collected.records)
    priced = [r for r in collected.records if r.source == "request_response"]
    assert all(r.prompt_tokens > 1000 and r.cost_usd > 0 for r in priced)  # the history and the tool docs


def test_every_step_sees_the_conversation_so_far_and_each_turn_closes_in_text(collected):
    by_conversation: dict[str, list] = {}
    for record in collected.records:
        by_conversation.setdefault(record.conversation_id, []).append(record)
    assert len(by_conversation) == CFG.conversations  # chat ids, sessions and history prefixes all meet
    for records in by_conversation.values():
        records.sort(key=lambda r: len(r.messages))
        assert records[0].messages[0].content == SYSTEM_PROMPT and records[0].messages[-1].role == "user"
        for earlier, later in zip(records, records[1:]):
            assert [m.model_dump() for m in later.messages[: len(earlier.messages)]] == [
                m.model_dump() for m in earlier.messages
            ]
            assert later.messages[len(earlier.messages)].model_dump(exclude_none=True) == earlier.response.model_dump(
                exclude_none=True
            )
            if earlier.response.tool_calls:  # the call's real result comes next, under the call's id
                result = later.messages[len(earlier.messages) + 1]
                assert result.role == "tool" and result.tool_call_id == earlier.response.tool_calls[0].id
            else:  # a text answer ends the turn: the user speaks next
                assert later.messages[len(earlier.messages) + 1].role == "user"
        assert all(len(r.response.tool_calls) <= 1 for r in records)  # one call per step
        called = {c.name for r in records for c in r.response.tool_calls}
        assert called <= set(records[0].tool_names)


def test_known_groups_name_the_api_class_of_each_call(log, collected):
    _, groups = log
    by_id = {r.record_id: r for r in collected.records}
    tasks = Counter(g["task"] for g in groups)
    assert (
        tasks["text:answer"] > 0
        and sum(n for t, n in tasks.items() if not t.startswith("text:")) > tasks["text:answer"]
    )
    for group in groups:
        record = by_id[group["record_id"]]
        assert group["task"].startswith("text:") == (record.output_kind == "text")


def test_pii_goes_into_some_user_turns_and_the_same_seed_gives_the_same_log(log):
    lines, _ = log
    with_person = {line for line in lines if any(name in line for name in FAKE_PEOPLE)}
    assert 0 < len(with_person) < len(lines)
    assert build_agent_log(CFG) == log
    assert build_agent_log(CFG.model_copy(update={"seed": 43}))[0] != lines
