"""Tiny inline call records the unit tests share."""

from __future__ import annotations

from components.core.schema import CallRecord, ChatMessage, ToolCall


def tool_record(record_id: str, city: str) -> CallRecord:
    """A weather call whose logged LLM answer is one `get_weather` call for ``city``, at $0.002."""
    return CallRecord(
        record_id=record_id,
        messages=[ChatMessage(role="user", content=f"weather in {city}?")],
        response=ChatMessage(
            role="assistant", tool_calls=[ToolCall(name="get_weather", arguments=f'{{"city": "{city}"}}')]
        ),
        cost_usd=0.002,
    )
