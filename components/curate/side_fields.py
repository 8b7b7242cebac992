"""S2's rule for every field of a call record, the conversation's texts and everything logged beside them.

Real agent logs carry personal data beside the prompt: a ``metadata`` object (a customer's email or phone), a
session id that embeds the user's email (``web:jane.doe@mail.com:3``), a participant ``name`` on a user message.
S2 therefore works from an allow-list: each field of :class:`CallRecord`, :class:`ChatMessage` and
:class:`ToolCall` has one rule below, and a field with no rule stops S2 (the schema test pins the tables to the
models, so a new field cannot reach an artifact unreviewed).

Rules:

* ``analyzed``: the text goes through Presidio with the record's pseudonyms (message contents, arguments, tool
  schemas, the model name, allow-listed metadata values).
* ``keyed_id``: an id taken from a logged field becomes a keyed HMAC under the pseudonym key, so it is stable (the
  calls of one conversation still meet, a tool call still matches its result) and cannot be traced back.
* ``label``: kept when it is one of the configured plain labels (``anonymize.agent_labels``), else a keyed id.
* ``source_kind``: only the source's kind (``jsonl``, ``proxy-store``...) is kept; its location may name a person.
* ``metadata``: product keys (the router's ``route`` with a selective call's numeric gate fields and decision, a
  call's ``origin``) are kept in their typed form only;
  keys in ``anonymize.metadata_keys`` keep their values, analyzed (numbers and booleans as their text); every
  other key is dropped, and counted.
* ``fact``: figures and enumerations the product reads (token counts, latency, cost, time, role, function name).

Framework-free.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from components.core.schema import CallRecord, ChatMessage, ToolCall

RECORD_FIELD_RULES: dict[str, str] = {
    "record_id": "keyed_id",
    "timestamp": "fact",
    "agent": "label",
    "source": "source_kind",
    "model": "analyzed",
    "messages": "analyzed",
    "tools": "analyzed",
    "response": "analyzed",
    "prompt_tokens": "fact",
    "completion_tokens": "fact",
    "latency_ms": "fact",
    "cost_usd": "fact",
    "metadata": "metadata",
    "conversation_id": "keyed_id",
}
MESSAGE_FIELD_RULES: dict[str, str] = {
    "role": "fact",
    "content": "analyzed",
    "tool_calls": "analyzed",
    "tool_call_id": "keyed_id",
    "name": "keyed_id",
}
TOOL_CALL_FIELD_RULES: dict[str, str] = {"id": "keyed_id", "name": "fact", "arguments": "analyzed"}

# What the product itself writes into metadata, in the only form S2 lets through.
ROUTES = frozenset({"slm", "llm", "fallback", "shadow", "canary"})
ROUTE_NUMBERS = ("confidence", "threshold", "latency_ms")  # a selective call's gate and its SLM time
DECISIONS = frozenset({"accept", "defer"})
AUDITS = frozenset({"match", "miss"})  # an audited call: the SLM's kept answer against the LLM's
ORIGINS = frozenset({"log", "augmented", "teacher", "deferred", "audited"})
_SOURCE_KIND = re.compile(r"^[a-z][a-z_-]{0,31}$")


SCHEMA_RULES: dict[type, dict[str, str]] = {
    CallRecord: RECORD_FIELD_RULES,
    ChatMessage: MESSAGE_FIELD_RULES,
    ToolCall: TOOL_CALL_FIELD_RULES,
}


def fields_without_a_rule(schema_rules: dict[type, dict[str, str]] = SCHEMA_RULES) -> list[str]:
    """``Model.field`` for every field of the record's models that has no rule here."""
    return [
        f"{model.__name__}.{name}"
        for model, rules in schema_rules.items()
        for name in model.model_fields
        if name not in rules
    ]


def check_rules_cover_the_schema() -> None:
    """Raise when a model field has no rule: a field added to the schema must say how S2 treats it."""
    missing = fields_without_a_rule()
    if missing:
        raise RuntimeError(f"fields with no anonymization rule in components/curate/side_fields.py: {missing}")


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def typed_route(value: Any) -> dict[str, Any] | None:
    """The router's decision as the product writes it (``{"route", "cluster_id"}``, and for a selective cluster's
    call its gate: ``confidence``, ``threshold``, ``latency_ms`` as finite numbers, ``decision`` ``accept`` or
    ``defer``; for an audited call ``audit`` ``match`` or ``miss``), or None when it is not one. Only those keys, of those types, are kept: any other value is dropped."""
    if not isinstance(value, dict) or value.get("route") not in ROUTES:
        return None
    cluster_id = value.get("cluster_id")
    if cluster_id is not None and (isinstance(cluster_id, bool) or not isinstance(cluster_id, int)):
        return None
    typed = {"route": value["route"], "cluster_id": cluster_id}
    for key in ROUTE_NUMBERS:
        if _finite_number(value.get(key)):
            typed[key] = float(value[key])
    if value.get("decision") in DECISIONS:
        typed["decision"] = value["decision"]
    if value.get("audit") in AUDITS:
        typed["audit"] = value["audit"]
    return typed


def source_kind(source: str) -> str:
    kind = source.split(":", 1)[0]
    return kind if _SOURCE_KIND.match(kind) else "other"


def metadata_texts(metadata: dict[str, Any], allowed_keys: set[str]) -> list[str]:
    """The texts of the allow-listed metadata values that S2 analyzes (numbers and booleans as their text)."""
    texts: list[str] = []
    _map_values(
        {key: value for key, value in metadata.items() if key in allowed_keys}, lambda text: texts.append(text) or text
    )
    return texts


def _map_values(value: Any, rewrite: Callable[[str], str]) -> Any:
    """Every leaf through ``rewrite`` as text; a number or boolean whose text changed becomes the rewritten text
    (a phone number logged as an integer is replaced like one logged as a string). Keys below the top level are
    data too: rewritten the same way."""
    if isinstance(value, dict):
        return {rewrite(str(key)): _map_values(item, rewrite) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_values(item, rewrite) for item in value]
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    rewritten = rewrite(text)
    return value if rewritten == text else rewritten


def rewrite_metadata(
    metadata: dict[str, Any], allowed_keys: set[str], rewrite: Callable[[str], str]
) -> tuple[dict[str, Any], int]:
    """(the metadata S2 writes, the number of keys dropped)."""
    kept: dict[str, Any] = {}
    dropped = 0
    for key, value in metadata.items():
        if key == "route":
            route = typed_route(value)
            if route is not None:
                kept[key] = route
                continue
        elif key == "origin" and value in ORIGINS:
            kept[key] = value
            continue
        if key in allowed_keys:
            kept[key] = _map_values(value, rewrite)
        else:
            dropped += 1
    return kept, dropped


def rewrite_side_fields(
    record: CallRecord,
    keyed_id: Callable[[str, str], str],
    agent_labels: set[str],
    metadata_keys: set[str],
    rewrite: Callable[[str], str],
) -> tuple[dict[str, Any], Counter[str]]:
    """The update for every field beside the conversation's texts, and counts of what was done (for the audit)."""
    counts: Counter[str] = Counter()
    metadata, dropped = rewrite_metadata(record.metadata, metadata_keys, rewrite)
    counts["metadata_keys_dropped"] += dropped
    agent = record.agent
    if agent is not None and agent not in agent_labels:
        agent = keyed_id("agent", agent)
        counts["agent_hashed"] += 1
    update: dict[str, Any] = {
        "record_id": keyed_id("call", record.record_id),
        "conversation_id": keyed_id("conv", record.conversation_id or ""),
        "agent": agent,
        "source": source_kind(record.source),
        "model": rewrite(record.model) if record.model else record.model,
        "metadata": metadata,
    }
    return update, counts


def rewrite_message_ids(message: ChatMessage, keyed_id: Callable[[str, str], str]) -> ChatMessage:
    """A message's logged ids (participant name, tool-call ids) as keyed ids; its texts are rewritten elsewhere."""
    return message.model_copy(
        update={
            "name": keyed_id("participant", message.name) if message.name else message.name,
            "tool_call_id": keyed_id("tool", message.tool_call_id) if message.tool_call_id else message.tool_call_id,
            "tool_calls": [
                call.model_copy(update={"id": keyed_id("tool", call.id) if call.id else call.id})
                for call in message.tool_calls
            ],
        }
    )
