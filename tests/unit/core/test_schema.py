"""CallRecord's conversation id: set from the log, else the history's prefix, kept through Parquet."""

from datetime import UTC, datetime

from components.core.schema import CallRecord, frame_to_records, history_prefix_id, records_to_frame


def record(record_id: str, messages: list[dict], conversation_id: str | None = None) -> CallRecord:
    return CallRecord(
        record_id=record_id,
        messages=messages,
        response={"role": "assistant", "content": "ok"},
        conversation_id=conversation_id,
    )


SYSTEM = {"role": "system", "content": "You book tickets."}


def test_the_prefix_is_the_system_prompt_and_the_first_user_message():
    start = record("a", [SYSTEM, {"role": "user", "content": "Two seats"}])
    later = record("b", [SYSTEM, {"role": "user", "content": "Two seats"}, {"role": "assistant", "content": "Done"}])
    other_prompt = record(
        "c", [{"role": "system", "content": "You sell shoes."}, {"role": "user", "content": "Two seats"}]
    )
    other_user = record("d", [SYSTEM, {"role": "user", "content": "One seat"}])
    assert start.conversation_id == later.conversation_id == history_prefix_id(start.messages)
    assert len({start.conversation_id, other_prompt.conversation_id, other_user.conversation_id}) == 3


def test_a_given_id_is_kept_and_survives_parquet_and_old_tables_get_the_prefix():
    records = [record("a", [SYSTEM, {"role": "user", "content": "x"}], "sess-1"), record("b", [SYSTEM])]
    frame = records_to_frame(records)
    assert [r.conversation_id for r in frame_to_records(frame)] == ["sess-1", records[1].conversation_id]
    old_table = frame.drop(columns=["conversation_id"])
    assert frame_to_records(old_table)[0].conversation_id == history_prefix_id(records[0].messages)


def test_times_on_a_whole_second_and_with_a_fraction_share_one_table():
    records = [record("a", [SYSTEM]), record("b", [SYSTEM])]
    records[0].timestamp = datetime(2026, 3, 20, 20, 42, 54, tzinfo=UTC)
    records[1].timestamp = datetime(2026, 3, 20, 20, 42, 54, 123000, tzinfo=UTC)
    assert [r.timestamp for r in frame_to_records(records_to_frame(records))] == [r.timestamp for r in records]


def test_a_tools_name_is_read_from_the_openai_form_and_the_bare_one_alike():
    from components.core.schema import tool_function, tool_name

    wrapped = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    bare = {"name": "get_weather", "parameters": {}}
    assert tool_name(wrapped) == tool_name(bare) == "get_weather"
    assert tool_function(wrapped) == tool_function(bare) == {"name": "get_weather", "parameters": {}}
    assert (tool_name({"type": "function"}), tool_name("get_weather"), tool_function(None)) == ("", "", {})
