"""Tools as text: one-line signatures (``name(arg: type, optional?: type = default) - description``) and the
descriptions shortened to what tells a cluster's tools apart. Used by the prompt (components/slm/prompt.py) and the
compact prompt's spec (components/slm/prompt_spec.py)."""

from __future__ import annotations

import json
import os
import re
from typing import Any


def one_line_json(value: Any) -> str:
    """One-line JSON, the only form used in prompts and targets."""
    return json.dumps(value, ensure_ascii=False)


def _type_of(schema: dict[str, Any]) -> str:
    """A JSON schema as a short type: ``string``, ``"a"|"b"``, ``array<number>``, ``{x: integer, y?: string}``."""
    if "enum" in schema:
        return "|".join(one_line_json(value) for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array<{_type_of(schema['items'])}>"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "{" + _parameter_list(schema) + "}"
    return kind if isinstance(kind, str) else "|".join(map(str, kind))


def _parameter_list(schema: dict[str, Any], untyped_strings: bool = False) -> str:
    required = set(schema.get("required", []))
    parts = []
    for name, spec in (schema.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        default = f" = {one_line_json(spec['default'])}" if "default" in spec else ""
        kind = _type_of(spec)
        typed = "" if untyped_strings and kind == "string" else f": {kind}"
        parts.append(f"{name}{'' if name in required else '?'}{typed}{default}")
    return ", ".join(parts)


def tool_name(tool: dict[str, Any]) -> str:
    """The function name of a tool in OpenAI form ``{"type": "function", "function": {...}}`` or bare."""
    function = tool.get("function", tool) if isinstance(tool, dict) else {}
    return function.get("name", "") if isinstance(function, dict) else ""


def tool_signature(
    tool: dict[str, Any],
    with_description: bool = True,
    description: str | None = None,
    untyped_strings: bool = False,
) -> str:
    """One line per tool: ``name(arg: type, optional?: type = default) - description``.

    The full JSON schema of a typical tool costs ~100 tokens, mostly parameter descriptions; this form keeps the
    names, types, enums, defaults and which arguments are optional at about a third of that, which keeps prompts
    inside a 135M model's training window and makes every training step cheaper. ``description`` replaces the
    tool's own (a prompt spec shortens it). ``untyped_strings`` leaves out the commonest type, ``string``: a bare
    parameter name reads as a string (``book_flight(access_token, card_id, travel_date, ...)``).
    """
    function = tool.get("function", tool)  # OpenAI form {"type": "function", "function": {...}} or bare
    parameters = function.get("parameters") if isinstance(function.get("parameters"), dict) else {}
    description = (function.get("description") or "" if description is None else description).strip()
    signature = f"{function.get('name', '')}({_parameter_list(parameters, untyped_strings)})"
    return signature + (f" - {description}" if description and with_description else "")


def _shared_opening(first: str, second: str) -> int:
    """Length of the opening two texts share, ended at a word boundary (so no word is cut in half)."""
    common = len(os.path.commonprefix([first, second]))
    if common == len(first) or common == len(second):
        return 0  # one text is the other's start: dropping it would leave that tool with no description
    return common - len(first[:common].split(" ")[-1]) if " " in first[:common] else 0


def _description(tool: dict[str, Any]) -> str:
    return str(tool.get("function", tool).get("description") or "").strip()


def first_sentence(text: str, limit: int | None) -> str:
    """The first sentence of a description (its summary, by docstring convention), cut to ``limit`` characters at
    a word boundary with "..." if still longer; the whole text when ``limit`` is ``None``."""
    if limit is None:
        return text
    match = re.match(r"(.+?[.!?])(\s|$)", text, re.DOTALL)
    sentence = match.group(1) if match else text
    if len(sentence) <= limit:
        return sentence
    return sentence[:limit].rsplit(" ", 1)[0] + "..."


def distinct_descriptions(tools: list[dict[str, Any]]) -> dict[str, str]:
    """Each tool's description without the opening it shares with another tool's (the longest such opening;
    among sorted texts it is shared with a neighbour): what tells the tools apart."""
    described = sorted((_description(tool), tool_name(tool)) for tool in tools)
    shortened = {}
    for index, (text, name) in enumerate(described):
        neighbours = [described[i][0] for i in (index - 1, index + 1) if 0 <= i < len(described)]
        cut = max((_shared_opening(text, other) for other in neighbours), default=0)
        shortened[name] = text[cut:]
    return shortened
