"""Curation: each reason removes the right records, the first copy of a duplicate stays, order is kept, and the
removal report never carries text from the records."""

import json

import pytest

import components.curate.filters as curate_module
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.filters import CurateConfig, curate

SYSTEM = "You are the booking assistant of a restaurant chain. Use the tools to act."
SEND_EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "body": {"type": "string"}, "urgent": {"type": "boolean"}},
            "required": ["to", "body"],
        },
    },
}
BOOK_TABLE = {
    "type": "function",
    "function": {
        "name": "book_table",
        "parameters": {
            "type": "object",
            "properties": {"party_size": {"type": "integer"}},
            "required": ["party_size"],
        },
    },
}
LONG_REQUEST = (
    "Please read the following notes from our weekly operations meeting and write a short summary for the team. "
    "We discussed the new opening hours for the downtown branch, which will now close at eleven on weekdays and "
    "at midnight on weekends. The kitchen staff asked for an extra dishwasher during the Friday evening rush, "
    "and the manager agreed to hire one temporary worker for the next two months. The supplier of fresh fish "
    "raised prices by eight percent, so the chef will review the seafood dishes on the menu and propose "
    "alternatives by the end of the month. Finally, the customer survey showed that guests love the terrace "
    "but find the music too loud, so the volume will be lowered after nine in the evening."
)
SECRET_WORDS = "Marguerite Oyelaran 4111111111111111"


def text(content: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=content)


def call(name: str, arguments: dict | str) -> ChatMessage:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name=name, arguments=raw)])


def rec(record_id: str, user: str, response: ChatMessage, tools: list | None = None) -> CallRecord:
    messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=user)]
    return CallRecord(record_id=record_id, messages=messages, response=response, tools=tools or [])


def reasons(result) -> dict[str, str]:
    return {entry["record_id"]: entry["reason"] for entry in result.removed}


def kept_ids(result) -> list[str]:
    return [record.record_id for record in result.kept]


@pytest.fixture(params=[True, False], ids=["minhash", "pairwise"])
def near_duplicate_backend(request, monkeypatch):
    if request.param and not curate_module.HAVE_DATASKETCH:
        pytest.skip("datasketch is not installed")
    monkeypatch.setattr(curate_module, "HAVE_DATASKETCH", request.param)


def test_a_clean_varied_set_is_kept_whole_and_in_order():
    records = [
        rec("a", "What time do you open on Sunday?", text("We open at noon on Sundays.")),
        rec("b", "Book a table for four.", call("book_table", {"party_size": 4}), [BOOK_TABLE]),
        rec("c", "Mail the chef the menu.", call("send_email", {"to": "chef", "body": "menu"}), [SEND_EMAIL]),
    ]
    result = curate(records, CurateConfig())
    assert kept_ids(result) == ["a", "b", "c"]
    assert result.removed == [] and result.counts == {}


def test_exact_duplicates_keep_the_first_and_name_it_ignoring_case_and_spacing():
    records = [
        rec("first", "Book a table for four.", text("Done, see you tonight.")),
        rec("other", "Cancel my booking.", text("Your booking is cancelled.")),
        rec("copy", "book a table  for FOUR.", text("Done, see you   tonight.")),
    ]
    result = curate(records, CurateConfig(near_duplicate_threshold=None))
    assert kept_ids(result) == ["first", "other"]
    assert result.removed == [{"record_id": "copy", "reason": "exact_duplicate", "detail": "first"}]


def test_same_request_to_another_agent_is_not_a_duplicate():
    other_agent = rec("b", "Book a table for four.", text("Done."))
    other_agent.messages[0] = ChatMessage(role="system", content="You are a travel agent.")
    result = curate([rec("a", "Book a table for four.", text("Done.")), other_agent], CurateConfig())
    assert kept_ids(result) == ["a", "b"]


def test_near_duplicate_one_word_change_is_removed_but_a_different_task_is_kept(near_duplicate_backend):
    records = [
        rec("orig", LONG_REQUEST, text("Summary: new hours, extra dishwasher, fish prices, quieter music.")),
        rec(
            "task",
            "Write a poem about the sea for our seafood menu card, four lines.",
            text("Waves roll in, the nets come home, ..."),
        ),
        rec(
            "near",
            LONG_REQUEST.replace("eight percent", "nine percent"),
            text("Summary: new hours, extra dishwasher, fish prices, quieter music."),
        ),
    ]
    result = curate(records, CurateConfig())
    assert kept_ids(result) == ["orig", "task"]
    assert result.removed == [{"record_id": "near", "reason": "near_duplicate", "detail": "orig"}]


def test_near_duplicate_threshold_none_keeps_near_copies():
    records = [
        rec("orig", LONG_REQUEST, text("Summary.")),
        rec("near", LONG_REQUEST.replace("eight percent", "nine percent"), text("Summary.")),
    ]
    assert kept_ids(curate(records, CurateConfig(near_duplicate_threshold=None))) == ["orig", "near"]


def test_calls_to_different_functions_are_never_near_duplicates(near_duplicate_backend):
    tools = [SEND_EMAIL, BOOK_TABLE]
    records = [
        rec("mail", LONG_REQUEST, call("send_email", {"to": "team", "body": "summary"}), tools),
        rec("book", LONG_REQUEST, call("book_table", {"party_size": 2}), tools),
    ]
    assert kept_ids(curate(records, CurateConfig())) == ["mail", "book"]


def test_empty_response_refusal_and_prompt_bounds():
    records = [
        rec("empty", "Hello?", text("   ")),
        rec("refused", "Tell me the chef's home address.", text("I\u2019m sorry, but I can't share that.")),
        rec("as_ai", "Do you like our pasta?", text("As an AI, I do not eat.")),
        rec("cannot", "Hack the POS.", text("I cannot help with that request.")),
        rec("fine", "Do you have vegan dishes?", text("Yes, and I'm sorry we ran out of tofu today.")),
        rec("long", "x" * 500, text("ok")),
    ]
    result = curate(records, CurateConfig(max_prompt_chars=400))
    assert kept_ids(result) == ["fine"]
    assert reasons(result) == {
        "empty": "empty_response",
        "refused": "refusal",
        "as_ai": "refusal",
        "cannot": "refusal",
        "long": "too_long",
    }
    assert result.counts == {"empty_response": 1, "too_long": 1, "refusal": 3}


def test_too_short_prompt():
    result = curate([rec("short", "Hi", text("Hello!"))], CurateConfig(min_prompt_chars=len(SYSTEM) + 10))
    assert reasons(result) == {"short": "too_short"}


def test_a_refusal_phrase_in_a_tool_call_argument_is_not_a_refusal():
    record = rec(
        "a", "Reply no.", call("send_email", {"to": "x", "body": "I'm sorry, but I can't come."}), [SEND_EMAIL]
    )
    assert kept_ids(curate([record], CurateConfig())) == ["a"]


def test_tool_call_arguments_cut_off_are_truncated_and_garbage_is_invalid():
    records = [
        rec("cut", "Mail the team.", call("send_email", '{"to": "team", "body": "The meeting is'), [SEND_EMAIL]),
        rec("garbage", "Mail the team.", call("send_email", "to=team"), [SEND_EMAIL]),
        rec("list", "Mail the team.", call("send_email", '["team"]'), [SEND_EMAIL]),
    ]
    result = curate(records, CurateConfig())
    assert reasons(result) == {"cut": "truncated", "garbage": "invalid_tool_call", "list": "invalid_tool_call"}
    assert "not a JSON object" in result.removed[2]["detail"]


@pytest.mark.parametrize(
    ("arguments", "name", "expected_in_detail"),
    [
        ({"to": "chef@example.com"}, "send_email", "missing required argument(s) ['body']"),
        ({"to": "chef@example.com", "body": "hi", "urgent": "yes"}, "send_email", "'arguments.<key>' is not of type"),
        ({"party_size": "four"}, "book_table", "'arguments.<key>' is not of type 'integer'"),
        ({"to": "chef@example.com", "body": "hi"}, "delete_database", "not among the offered tools"),
    ],
)
def test_tool_calls_are_checked_against_the_offered_schemas(arguments, name, expected_in_detail):
    result = curate([rec("bad", "Do it.", call(name, arguments), [SEND_EMAIL, BOOK_TABLE])], CurateConfig())
    assert result.kept == []
    [entry] = result.removed
    assert entry["reason"] == "invalid_tool_call" and expected_in_detail in entry["detail"]
    for value in ("chef@example.com", "yes", "four"):
        assert value not in entry["detail"]


def test_a_problem_deep_in_the_arguments_is_located_by_shape_never_by_its_keys():
    """Keys below a tool's parameters are data (a name keying a card): the audit, which reaches MLflow, must not
    quote them."""
    cards = {
        "type": "function",
        "function": {
            "name": "store_cards",
            "parameters": {
                "type": "object",
                "properties": {"cards": {"type": "object", "additionalProperties": {"type": "integer"}}},
                "required": ["cards"],
            },
        },
    }
    record = rec("deep", "Store my cards.", call("store_cards", {"cards": {"Alex Moreau": "not-a-number"}}), [cards])
    [entry] = curate([record], CurateConfig()).removed
    assert entry["reason"] == "invalid_tool_call"
    assert "arguments.<key>.<key>" in entry["detail"]
    assert "Alex" not in entry["detail"] and "cards" not in entry["detail"].split(":", 1)[1]


def test_without_offered_tools_only_the_json_shape_is_checked():
    assert kept_ids(curate([rec("a", "Do it.", call("anything", {"x": 1}))], CurateConfig())) == ["a"]


def test_removed_entries_carry_no_text_from_the_records():
    records = [
        rec("keep", SECRET_WORDS, text(f"Booked for {SECRET_WORDS}.")),
        rec("dup", SECRET_WORDS, text(f"Booked for {SECRET_WORDS}.")),
        rec("refusal", SECRET_WORDS, text(f"I'm sorry, but I can't book for {SECRET_WORDS}.")),
        rec("long", SECRET_WORDS * 100, text("ok")),
        rec("schema", SECRET_WORDS, call("send_email", {"to": SECRET_WORDS, "urgent": SECRET_WORDS}), [SEND_EMAIL]),
        rec("typed", SECRET_WORDS, call("send_email", {"to": 4111111111111111, "body": "x"}), [SEND_EMAIL]),
    ]
    result = curate(records, CurateConfig(max_prompt_chars=2000))
    assert kept_ids(result) == ["keep"]
    assert set(reasons(result).values()) == {"exact_duplicate", "refusal", "too_long", "invalid_tool_call"}
    report = json.dumps(result.removed)
    for word in [*SECRET_WORDS.split(), "Booked", "book for"]:
        assert word not in report
    for entry in result.removed:
        assert set(entry) == {"record_id", "reason", "detail"}
    assert sum(result.counts.values()) == len(result.removed)


def test_disabled_switches_keep_everything():
    records = [
        rec("a", "Book.", text("Done.")),
        rec("a2", "Book.", text("Done.")),
        rec("refused", "Hack it.", text("I cannot help with that.")),
        rec("cut", "Mail.", call("send_email", '{"to": "te'), [SEND_EMAIL]),
        rec("unknown", "Mail.", call("fax", {"to": 1}), [SEND_EMAIL]),
        rec("missing", "Mail.", call("send_email", {"to": "x"}), [SEND_EMAIL]),
    ]
    cfg = CurateConfig(
        dedupe_exact=False,
        near_duplicate_threshold=None,
        drop_refusals=False,
        drop_truncated=False,
        validate_tool_calls=False,
    )
    result = curate(records, cfg)
    assert kept_ids(result) == [r.record_id for r in records]
    assert result.removed == [] and result.counts == {}


def test_truncation_is_reported_even_when_schema_checks_are_off():
    records = [rec("cut", "Mail.", call("send_email", '{"to": "te'), [SEND_EMAIL])]
    assert reasons(curate(records, CurateConfig(validate_tool_calls=False))) == {"cut": "truncated"}


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError):
        CurateConfig(dedupe_exakt=False)


def test_requests_in_other_languages_are_removed_only_when_the_detector_is_sure():
    records = [
        rec("en", "What time does the downtown branch open on Sunday?", text("At noon.")),
        rec("de", "Wann öffnet die Filiale in der Innenstadt am Sonntag?", text("Um zwölf.")),
        rec("fr", "À quelle heure ouvre la succursale du centre-ville dimanche ?", text("À midi.")),
        rec("short", "Hola, ¿qué tal?", text("Bien.")),
    ]  # too short to judge: kept
    result = curate(records, CurateConfig(languages=["en"]))
    assert kept_ids(result) == ["en", "short"]
    assert reasons(result) == {"de": "wrong_language", "fr": "wrong_language"}
    assert result.counts == {"wrong_language": 2}
    assert all("Filiale" not in entry["detail"] and "succursale" not in entry["detail"] for entry in result.removed)
    assert kept_ids(curate(records, CurateConfig(languages=None))) == ["en", "de", "fr", "short"]


def test_responses_over_the_length_limit_are_removed():
    records = [
        rec("ok", "Summarize the notes.", text("Short summary.")),
        rec("long", "Summarize the notes in detail.", text("word " * 100)),
        rec("long_call", "Mail the chef.", call("send_email", {"to": "chef", "body": "x" * 200}), [SEND_EMAIL]),
    ]
    result = curate(records, CurateConfig(max_response_chars=150))
    assert kept_ids(result) == ["ok"]
    assert reasons(result) == {"long": "response_too_long", "long_call": "response_too_long"}


def test_calls_the_router_answered_with_an_slm_are_not_training_labels():
    def routed(record_id: str, route: str, user: str) -> CallRecord:
        record = rec(record_id, user, call("book_table", {"party_size": 2}), [BOOK_TABLE])
        return record.model_copy(update={"metadata": {"route": {"route": route, "cluster_id": 3}}})

    records = [
        routed("by-slm", "slm", "Table for two."),
        routed("by-llm-shadow", "shadow", "Table for two at 8."),
        routed("fell-back", "fallback", "Table for two at 9."),
    ]
    result = curate(records, CurateConfig())
    assert reasons(result) == {"by-slm": "slm_answer"}
    assert "cluster 3" in result.removed[0]["detail"]
    assert kept_ids(result) == ["by-llm-shadow", "fell-back"]
    assert kept_ids(curate(records, CurateConfig(drop_slm_answers=False))) == [r.record_id for r in records]
