"""The one normalized record every step reads and writes, and its Parquet form.

A logged agent LLM call becomes a :class:`CallRecord`: the prompt side (messages and tools as the agent sent them),
the LLM's response message (text and/or tool calls), and the usage/latency/cost figures. Nested parts are stored
in Parquet as JSON text columns so the file stays readable by any Parquet tool and the schema stays flat.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

OutputKind = Literal["tool_call", "text"]


class ToolCall(BaseModel):
    """An OpenAI-style function call; ``arguments`` is the JSON text exactly as the LLM produced it."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; raises ``ValueError`` when the LLM emitted invalid JSON or a non-object."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError(f"tool call arguments are not a JSON object: {self.arguments[:80]!r}")
        return value


class ChatMessage(BaseModel):
    """One chat message (system, user, assistant or tool)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


def history_prefix_id(messages: list[ChatMessage]) -> str:
    """The conversation a call belongs to when its log names none: a hash of the start of its history, the system
    prompt(s) and the first user message, which every later call of the conversation repeats verbatim (so the
    request/response calls of one conversation meet). Two conversations opening with the same system prompt and
    the same first message share an id: a coarser split, never a leaking one. A hash, never the text (it may
    hold PII)."""
    system = [m.content or "" for m in messages if m.role in ("system", "developer")]
    first_user = next((m.content or "" for m in messages if m.role == "user"), None)
    if first_user is None and messages:
        first_user = f"{messages[0].role}:{messages[0].content or ''}"
    digest = hashlib.sha256(json.dumps([system, first_user]).encode()).hexdigest()
    return f"conv-{digest[:16]}"


def tool_function(tool: Any) -> dict[str, Any]:
    """An offered tool's function object, for the OpenAI form (``{"type": "function", "function": {...}}``) and the
    bare one (``{"name": ..., "parameters": ...}``) alike; {} for anything else. The one place a tool is unwrapped."""
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    return function if isinstance(function, dict) else {}


def tool_name(tool: Any) -> str:
    """An offered tool's function name ("" when it has none)."""
    name = tool_function(tool).get("name")
    return name if isinstance(name, str) else ""


class CallRecord(BaseModel):
    """One LLM call of the agent, normalized from any supported log form."""

    model_config = ConfigDict(extra="forbid")

    record_id: str
    timestamp: datetime | None = None
    agent: str | None = None
    source: str = "unknown"
    model: str | None = None
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    response: ChatMessage
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    # Facts about the call beyond the exchange itself, e.g. the S6 router's ``route`` (which model answered, why).
    # Never prompt text: it is not anonymized by S2.
    metadata: dict[str, Any] = Field(default_factory=dict)
    # The conversation the call is part of: calls of one conversation share their history, so train/test splits
    # keep them on one side. S1 sets it from the log (a chat line's id, a session field); else the history's
    # prefix (:func:`history_prefix_id`).
    conversation_id: str | None = None

    @model_validator(mode="after")
    def _every_record_has_a_conversation(self) -> CallRecord:
        if not self.conversation_id:
            self.conversation_id = history_prefix_id(self.messages)
        return self

    @property
    def system_prompt(self) -> str:
        return "\n".join(m.content or "" for m in self.messages if m.role in ("system", "developer"))

    @property
    def user_request(self) -> str:
        """The last user message: what this call was asked to do."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content or ""
        return ""

    @property
    def tool_names(self) -> list[str]:
        return [tool_name(tool) for tool in self.tools]

    @property
    def output_kind(self) -> OutputKind:
        return "tool_call" if self.response.tool_calls else "text"


# Columns holding nested structures as JSON text; the rest are scalars.
_JSON_COLUMNS = {
    "messages": "messages_json",
    "tools": "tools_json",
    "response": "response_json",
    "metadata": "metadata_json",
}
RECORD_COLUMNS = [
    "record_id",
    "timestamp",
    "agent",
    "source",
    "model",
    "messages_json",
    "tools_json",
    "response_json",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "cost_usd",
    "metadata_json",
    "conversation_id",
]


def records_to_frame(records: list[CallRecord]) -> pd.DataFrame:
    rows = []
    for record in records:
        row = record.model_dump(mode="json", exclude=set(_JSON_COLUMNS))
        row["messages_json"] = json.dumps([m.model_dump(mode="json", exclude_none=True) for m in record.messages])
        row["tools_json"] = json.dumps(record.tools)
        row["response_json"] = json.dumps(record.response.model_dump(mode="json", exclude_none=True))
        row["metadata_json"] = json.dumps(record.metadata)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    # ISO 8601 of any precision: a time on a whole second is written without a fraction, the others with one.
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    for column in ("prompt_tokens", "completion_tokens"):
        frame[column] = frame[column].astype("Int64")
    for column in ("latency_ms", "cost_usd"):
        frame[column] = frame[column].astype("float64")
    return frame


def frame_to_records(frame: pd.DataFrame) -> list[CallRecord]:
    records = []
    for row in frame.to_dict(orient="records"):
        clean = {key: (None if _is_missing(value) else value) for key, value in row.items()}
        timestamp = clean.get("timestamp")
        records.append(
            CallRecord(
                record_id=clean["record_id"],
                timestamp=timestamp.to_pydatetime() if hasattr(timestamp, "to_pydatetime") else timestamp,
                agent=clean.get("agent"),
                source=clean.get("source") or "unknown",
                model=clean.get("model"),
                messages=json.loads(clean["messages_json"]),
                tools=json.loads(clean["tools_json"] or "[]"),
                response=json.loads(clean["response_json"]),
                prompt_tokens=clean.get("prompt_tokens"),
                completion_tokens=clean.get("completion_tokens"),
                latency_ms=clean.get("latency_ms"),
                cost_usd=clean.get("cost_usd"),
                # Tables written before the column existed read as calls without metadata.
                metadata=json.loads(clean.get("metadata_json") or "{}"),
                # Older tables have no column: the record's history prefix stands in.
                conversation_id=clean.get("conversation_id"),
            )
        )
    return records


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write any step table (records, assignments, splits, predictions) as Parquet, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def write_records(records: list[CallRecord], path: Path, encrypt: bool = False) -> Path:
    """Records as Parquet; ``encrypt`` stores the file as one Fernet token (S1's raw records hold PII), which
    :func:`read_records` decrypts transparently."""
    if not encrypt:
        return write_table(records_to_frame(records), path)
    from components.core.secure_store import write_encrypted

    buffer = io.BytesIO()
    records_to_frame(records).to_parquet(buffer, index=False)
    return write_encrypted(buffer.getvalue(), path)


def split_records(
    records: dict[str, CallRecord], splits: pd.DataFrame, cluster_id: int, split: str
) -> list[CallRecord]:
    """The records of one cluster's 'train' or 'test' split, in the splits table's order."""
    selected = splits.loc[(splits.cluster_id == cluster_id) & (splits.split == split), "record_id"]
    return [records[record_id] for record_id in selected]


def read_records(path: Path) -> list[CallRecord]:
    if not path.exists():
        raise FileNotFoundError(f"no records at {path}: run the previous step first")
    from components.core.secure_store import read_maybe_encrypted

    return frame_to_records(pd.read_parquet(io.BytesIO(read_maybe_encrypted(path))))
