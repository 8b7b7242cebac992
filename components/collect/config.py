"""The `collect` section of params.yaml: sources, field mappings, price table, limits (split from collect.py so
the readers in components/collect/sources/ can use it without an import cycle)."""

from __future__ import annotations

from components.core.config import StepConfig


class TokenPrice(StepConfig):
    input: float
    output: float


class FieldMapping(StepConfig):
    """Where a generic JSONL/Parquet log keeps each part of a call: dotted paths into one row (``a.b.0.c``).

    ``messages`` holds a list of OpenAI chat messages, or a string (taken as one user message); ``response`` an
    assistant message object, or a string (the assistant's text). The other fields are optional.
    """

    messages: str
    response: str
    tools: str | None = None
    model: str | None = None
    id: str | None = None
    timestamp: str | None = None
    agent: str | None = None
    prompt_tokens: str | None = None
    completion_tokens: str | None = None
    latency_ms: str | None = None


class CollectConfig(StepConfig):
    input: str = "data/raw/calls.jsonl"
    # Source specs (see components/collect/sources/__init__.py); empty = the single JSONL file `input`.
    sources: list[str] = []
    output: str = "data/collected/records.parquet"
    # Per-source watermarks of what was read already (no call content: offsets, timestamps, ids).
    state: str = "data/collected/state.json"
    quarantine: str = "data/quarantine.jsonl"
    summary: str = "reports/collect.json"
    default_agent: str = "default"
    # A longer line is quarantined unread (a runaway log line must not exhaust memory).
    max_line_bytes: int = 8_000_000
    # Two logs of one content are one call when their times differ by at most this (two sources stamp a call at
    # slightly different points: request sent, trace opened); further apart, the agent made the call again.
    same_call_within_s: float = 2.0
    mappings: dict[str, FieldMapping] = {
        "example": FieldMapping(
            messages="input.messages",
            response="output",
            tools="input.tools",
            model="model",
            id="id",
            timestamp="timestamp",
            agent="agent",
            prompt_tokens="usage.prompt_tokens",
            completion_tokens="usage.completion_tokens",
            latency_ms="latency_ms",
        )
    }
    prices_per_1m_tokens: dict[str, TokenPrice] = {
        "gpt-4o": TokenPrice(input=2.50, output=10.00),
        "gpt-4o-mini": TokenPrice(input=0.15, output=0.60),
        "gpt-4.1": TokenPrice(input=2.00, output=8.00),
    }
