"""Value-diverse training examples without a teacher (``finetune.augmentation``).

A logged call teaches the SLM one value per argument; the values it gets wrong on held-out calls are the ones it saw
too few of. From each training call whose arguments repeat a value its request states, new examples are made by
*consistent substitution*: the value is replaced everywhere in the conversation and in the call by another value of
the same parameter (one seen in the cluster's other calls, an enum member, or a generated value of the same type and
format), and the tool list is shuffled. No rewording (that needs a model: teacher synthesis). Every example is
re-validated before it is kept: its arguments parse and satisfy the tool's schema, and each substituted value is
grounded in its prompt. Only training calls are read, so no held-out text can reach training; the example's
``metadata.origin`` is ``augmented`` and ``metadata.augmented_from`` names its source record.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from components.core.config import StepConfig
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.scoring.tool_calls import json_schema_form, tool_parameters

ORIGIN_LOG, ORIGIN_AUGMENTED = "log", "augmented"
MIN_VALUE_CHARS = 2  # shorter values ("a", "1") occur everywhere in a text: substituting them is not consistent


class AugmentationSettings(StepConfig):
    enabled: bool = False
    copies: int = 3  # new examples per training call (at most; fewer when it has no substitutable value)
    shuffle_tools: bool = True
    seed: int = 0


@dataclass
class AugmentationReport:
    source_calls: int = 0
    examples: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict[str, Any]:
        return {"source_calls": self.source_calls, "examples": self.examples, "rejected": dict(self.rejected)}


def _prompt_text(record: CallRecord) -> str:
    return "\n".join(m.content or "" for m in record.messages if m.role in ("user", "tool"))


def _grounded(value: Any, text: str) -> bool:
    """A value the request states verbatim (strings and numbers; booleans and containers never are)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    rendered = value if isinstance(value, str) else json.dumps(value)
    if len(rendered) < MIN_VALUE_CHARS:
        return False
    return re.search(rf"(?<!\w){re.escape(rendered)}(?!\w)", text) is not None


def _seen_values(records: Sequence[CallRecord]) -> dict[tuple[str, str], list[Any]]:
    """(function, parameter) -> the distinct values the cluster's calls gave it, in first-seen order."""
    seen: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for record in records:
        for call in record.response.tool_calls:
            try:
                arguments = call.parsed_arguments()
            except ValueError:
                continue
            for name, value in arguments.items():
                key = (call.name, name)
                if isinstance(value, str | int | float) and not isinstance(value, bool) and value not in seen[key]:
                    seen[key].append(value)
    return seen


def _generated(value: Any, rng: random.Random) -> Any:
    """A value of the same type and format: digits for digits (same count), same-length case-preserving letters for a
    single word; None where no safe form is known (free text is better left to a teacher)."""
    if isinstance(value, int):
        digits = len(str(abs(value)))
        low = 10 ** (digits - 1) if digits > 1 else 0
        return rng.randint(low, 10**digits - 1) * (-1 if value < 0 else 1)
    if isinstance(value, float):
        decimals = len(repr(value).split(".")[1]) if "." in repr(value) else 1
        return round(value * rng.uniform(0.5, 1.5), decimals)
    if isinstance(value, str) and value.isdigit():
        return "".join(rng.choice("0123456789") for _ in value)
    return None


def _alternatives(value: Any, schema: dict[str, Any], seen: list[Any], rng: random.Random) -> list[Any]:
    pool = [v for v in (schema.get("enum") or []) + seen if v != value and type(v) is type(value)]
    generated = _generated(value, rng)
    if generated is not None and generated != value:
        pool.append(generated)
    return list(dict.fromkeys(json.dumps(v) for v in pool))  # distinct, hashable


def _substitute(text: str | None, old: Any, new: Any) -> str | None:
    if text is None:
        return None
    rendered_old = old if isinstance(old, str) else json.dumps(old)
    rendered_new = new if isinstance(new, str) else json.dumps(new)
    return re.sub(rf"(?<!\w){re.escape(rendered_old)}(?!\w)", lambda _: rendered_new, text)


def _valid(call: ToolCall, parameters: dict[str, dict[str, Any]]) -> bool:
    import jsonschema

    try:
        arguments = call.parsed_arguments()
    except ValueError:
        return False
    schema = json_schema_form(parameters.get(call.name) or {"type": "object"})
    return jsonschema.Draft202012Validator(schema).is_valid(arguments)


def _one_example(
    record: CallRecord, seen: dict[tuple[str, str], list[Any]], rng: random.Random, copy: int, shuffle: bool
) -> tuple[CallRecord | None, str]:
    parameters = tool_parameters(record.tools)
    text = _prompt_text(record)
    substitutions: dict[str, Any] = {}  # old value (JSON) -> new value
    for call in record.response.tool_calls:
        arguments = call.parsed_arguments()
        properties = (parameters.get(call.name) or {}).get("properties") or {}
        for name, value in arguments.items():
            key = json.dumps(value)
            if key in substitutions or not _grounded(value, text):
                continue
            choices = _alternatives(value, properties.get(name) or {}, seen.get((call.name, name), []), rng)
            # a new value must not already be in the prompt, or the substitution would merge two different values
            choices = [c for c in choices if not _grounded(json.loads(c), text)]
            if choices:
                substitutions[key] = json.loads(rng.choice(choices))
    if not substitutions:
        return None, "no value stated in the request"

    def rewrite(message: ChatMessage) -> ChatMessage:
        content = message.content
        for old, new in substitutions.items():
            content = _substitute(content, json.loads(old), new)
        return message.model_copy(update={"content": content})

    calls = []
    for call in record.response.tool_calls:
        arguments = call.parsed_arguments()
        new_arguments = {k: substitutions.get(json.dumps(v), v) for k, v in arguments.items()}
        calls.append(call.model_copy(update={"arguments": json.dumps(new_arguments)}))
    tools = list(record.tools)
    if shuffle:
        rng.shuffle(tools)
    example = record.model_copy(
        update={
            "record_id": f"{record.record_id}#aug{copy}",
            "messages": [rewrite(m) if m.role in ("user", "tool") else m for m in record.messages],
            "tools": tools,
            "response": record.response.model_copy(update={"tool_calls": calls}),
            "metadata": {**record.metadata, "origin": ORIGIN_AUGMENTED, "augmented_from": record.record_id},
        }
    )
    new_text = _prompt_text(example)
    if not all(_valid(call, parameters) for call in calls):
        return None, "arguments fail the tool schema"
    if not all(_grounded(new, new_text) for new in substitutions.values()):
        return None, "a substituted value is not grounded in the prompt"
    return example, ""


def augment(
    records: Sequence[CallRecord], settings: AugmentationSettings
) -> tuple[list[CallRecord], AugmentationReport]:
    """New examples from a cluster's *training* calls (the caller must not pass held-out calls)."""
    report = AugmentationReport(source_calls=len(records))
    if not settings.enabled or settings.copies <= 0:
        return [], report
    rng = random.Random(settings.seed)
    seen = _seen_values(records)
    examples: list[CallRecord] = []
    known_prompts = {json.dumps([m.content for m in r.messages]) for r in records}
    for record in records:
        if not record.response.tool_calls:
            report.rejected["text answer (nothing to substitute)"] += 1
            continue
        try:
            [call.parsed_arguments() for call in record.response.tool_calls]
        except ValueError:
            report.rejected["arguments are not a JSON object"] += 1
            continue
        for copy in range(settings.copies):
            example, reason = _one_example(record, seen, rng, copy, settings.shuffle_tools)
            if example is None:
                report.rejected[reason] += 1
                break  # the same reason would repeat for every copy
            prompt_key = json.dumps([m.content for m in example.messages])
            if prompt_key in known_prompts:
                report.rejected["duplicate of an existing example"] += 1
                continue
            known_prompts.add(prompt_key)
            examples.append(example)
    report.examples = len(examples)
    return examples, report


def with_origin(records: Sequence[CallRecord], origin: str = ORIGIN_LOG) -> list[CallRecord]:
    """The records tagged with their origin (``log`` for logged calls), keeping any origin they already carry."""
    return [r.model_copy(update={"metadata": {"origin": origin, **r.metadata}}) for r in records]
