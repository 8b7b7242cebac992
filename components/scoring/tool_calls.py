"""Tool calls checked the way the Berkeley Function Calling Leaderboard's AST checker does it.

The reference is turned into BFCL's *possible answer* form, ``{argument: [acceptable values]}``, where ``""``
marks an argument that may be left out; ground-truth labels can be written in that form directly. A predicted call
matches when the function is the same, every required argument is there, no argument is unexpected, each value
has the parameter's type (an int is accepted where a float is expected, as Python would promote it) and is one of
the acceptable values (strings compared without case, spaces and ``,./-_*^``; lists in order; objects key by
key). Parallel calls are matched in any order. Partial credit (function-name and argument accuracy), JSON validity
of the arguments and validity against the tool's JSON schema come with the full match.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import permutations
from typing import Any

import numpy as np

from components.core.schema import ChatMessage, ToolCall, tool_function

OPTIONAL = ""  # BFCL's marker, in a list of acceptable values, of an argument that may be absent

Acceptable = dict[str, list[Any]]  # argument -> acceptable values


# ---- tool calls: values -----------------------------------------------------------------------------------

_BFCL_STRIP = re.compile(r"[ ,./\-_*^]")
# JSON-schema and BFCL type names -> Python types ("number"/"float" also take an int, see _coerce).
_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "object": dict,
    "dict": dict,
}


def standardize_string(text: str) -> str:
    """BFCL's string normal form: no spaces or ``,./-_*^``, lower case, single quotes as double."""
    return _BFCL_STRIP.sub("", text).lower().replace("'", '"')


def _standardized(value: Any) -> Any:
    if isinstance(value, str):
        return standardize_string(value)
    if isinstance(value, list):
        return [_standardized(item) for item in value]
    return value


def _is_acceptable_form(value: Any) -> bool:
    """BFCL writes a nested object as ``{key: [acceptable values]}``; a literal object has some non-list value."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, list) for v in value.values())


def _as_acceptable(value: dict[str, Any]) -> Acceptable:
    return value if _is_acceptable_form(value) else {k: [v] for k, v in value.items() if v is not None}


def _object_matches(value: dict[str, Any], option: Any) -> bool:
    if not isinstance(option, dict):
        return False
    acceptable = _as_acceptable(option)
    for key, item in value.items():
        if key not in acceptable or not _value_matches(item, acceptable[key], None):
            return False
    return all(key in value or OPTIONAL in options for key, options in acceptable.items())


def _expected_type(options: list[Any], schema_type: Any) -> type | None:
    if isinstance(schema_type, str) and schema_type in _PYTHON_TYPES:
        return _PYTHON_TYPES[schema_type]
    given = next((o for o in options if o != OPTIONAL), None)
    if given is None:
        return None
    if isinstance(given, bool):
        return bool
    return float if isinstance(given, float) else type(given)


def _value_matches(value: Any, options: list[Any], schema: dict[str, Any] | None) -> bool:
    """Is ``value`` of the expected type and one of the acceptable ``options``?"""
    schema = schema or {}
    expected = _expected_type(options, schema.get("type"))
    if expected is float and type(value) is int:  # Python's int -> float promotion; bool is not an int here
        value = float(value)
    if expected is not None and type(value) is not expected:
        # BFCL's "variable" case: an acceptable value of another type than the schema's (e.g. a variable name)
        answer_type = _expected_type(options, None)
        if answer_type is None or answer_type is expected or type(value) is not answer_type:
            return False
    elif expected is list and isinstance(schema.get("items"), dict):
        # one level of item types, as BFCL checks them: no int -> float promotion inside lists, but an item of
        # the type the acceptable list's items have passes (BFCL's "variable" case again)
        item_type = _PYTHON_TYPES.get(schema["items"].get("type"))

        def items_typed(option: Any) -> bool:
            if not isinstance(option, list):
                return True  # BFCL only checks item types against acceptable values that are lists
            answer_type = _expected_type(option, None)
            return all(type(item) is item_type or type(item) is answer_type for item in value)

        if item_type is not None and not any(items_typed(option) for option in options):
            return False
    if isinstance(value, dict):
        return any(_object_matches(value, option) for option in options if option != OPTIONAL)
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return any(
            isinstance(option, list)
            and len(option) == len(value)
            and all(_object_matches(v, o) for v, o in zip(value, option))
            for option in options
        )
    if isinstance(value, (str, list)):
        return _standardized(value) in [_standardized(option) for option in options if option != OPTIONAL]
    return value in [option for option in options if option != OPTIONAL]


# ---- tool calls: calls ------------------------------------------------------------------------------------


def tool_parameters(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Function name -> its parameters' JSON schema, for OpenAI-form (``{"function": {...}}``) or bare tools."""
    found = {}
    for tool in tools or []:
        function = tool_function(tool)
        if isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            found[function["name"]] = parameters if isinstance(parameters, dict) else {}
    return found


def arguments_or_none(call: ToolCall) -> dict[str, Any] | None:
    """The call's arguments without null values, or None when they are not a JSON object."""
    try:
        return {k: v for k, v in call.parsed_arguments().items() if v is not None}
    except ValueError:  # json.JSONDecodeError is a ValueError too
        return None


def acceptable_from_call(call: ToolCall, parameters: dict[str, Any] | None = None) -> Acceptable | None:
    """A logged call as BFCL possible answers: each value it gives, and ``""`` where the argument may be left out
    (the schema does not require it and the value is its default, or the call did not give it)."""
    arguments = arguments_or_none(call)
    if arguments is None:
        return None
    properties = (parameters or {}).get("properties") or {}
    required = set((parameters or {}).get("required") or [])
    acceptable: Acceptable = {}
    for name, value in arguments.items():
        spec = properties.get(name) if isinstance(properties.get(name), dict) else {}
        acceptable[name] = [value]
        if name not in required and "default" in spec and _value_matches(spec["default"], [value], spec):
            acceptable[name].append(OPTIONAL)
    for name, spec in properties.items():
        if name not in acceptable and name not in required:
            spec = spec if isinstance(spec, dict) else {}
            acceptable[name] = [OPTIONAL] + ([spec["default"]] if "default" in spec else [])
    return acceptable


def check_call(
    predicted: ToolCall, expected_name: str, acceptable: Acceptable | None, parameters: dict[str, Any] | None = None
) -> str | None:
    """None if the predicted call matches, else the reason (BFCL's error kinds)."""
    if predicted.name != expected_name:
        return "wrong_function"
    arguments = arguments_or_none(predicted)
    if arguments is None:
        return "invalid_json"
    if acceptable is None:  # the reference itself is broken: nothing can match it
        return "invalid_reference"
    properties = (parameters or {}).get("properties") or {}
    for name in (parameters or {}).get("required") or []:
        if name not in arguments:
            return "missing_required"
    for name, value in arguments.items():
        if name not in acceptable or (properties and name not in properties):
            return "unexpected_argument"
        spec = properties.get(name) if isinstance(properties.get(name), dict) else None
        if not _value_matches(value, acceptable[name], spec):
            return "wrong_value"
    if any(name not in arguments and OPTIONAL not in options for name, options in acceptable.items()):
        return "missing_argument"
    return None


ExpectedCall = tuple[str, Acceptable | None]


def expected_calls(message: ChatMessage, tools: list[dict[str, Any]] | None = None) -> list[ExpectedCall]:
    parameters = tool_parameters(tools)
    return [(c.name, acceptable_from_call(c, parameters.get(c.name))) for c in message.tool_calls]


def calls_match(
    predicted: list[ToolCall], expected: list[ExpectedCall], tools: list[dict[str, Any]] | None = None
) -> bool:
    """BFCL's parallel no-order check: as many calls as expected, each expected call matched by a distinct one
    (taken greedily in the expected order, like BFCL)."""
    if len(predicted) != len(expected):
        return False
    parameters = tool_parameters(tools)
    free = list(range(len(predicted)))
    for name, acceptable in expected:
        match = next(
            (i for i in free if check_call(predicted[i], name, acceptable, parameters.get(name)) is None), None
        )
        if match is None:
            return False
        free.remove(match)
    return True


def _matched_arguments(
    arguments: dict[str, Any] | None, acceptable: Acceptable | None, parameters: dict[str, Any] | None
) -> int:
    """Expected arguments (those with a value in the reference) that the predicted arguments get right."""
    if arguments is None or acceptable is None:
        return 0
    properties = (parameters or {}).get("properties") or {}
    matched = 0
    for name, options in acceptable.items():
        if OPTIONAL in options:
            continue  # an argument that may be left out is not counted (see _counted_arguments)
        spec = properties.get(name) if isinstance(properties.get(name), dict) else None
        matched += name in arguments and _value_matches(arguments[name], options, spec)
    return matched


def _counted_arguments(acceptable: Acceptable | None) -> int:
    return sum(1 for options in (acceptable or {}).values() if OPTIONAL not in options)


def _best_pairing(
    predicted: list[dict[str, Any] | None], expected: list[Acceptable | None], parameters: dict[str, Any] | None
) -> int:
    """Most expected arguments matched when pairing same-name calls one to one (exhaustive for small groups)."""
    if len(predicted) > 6 or len(expected) > 6:  # greedy: each expected call takes its best free prediction
        free, total = list(predicted), 0
        for target in expected:
            if not free:
                break
            scores = [_matched_arguments(p, target, parameters) for p in free]
            total += max(scores)
            free.pop(int(np.argmax(scores)))
        return total
    best = 0
    for chosen in permutations(range(len(predicted)), min(len(predicted), len(expected))):
        best = max(best, sum(_matched_arguments(predicted[p], expected[e], parameters) for e, p in enumerate(chosen)))
    return best


def _schema_valid(call: ToolCall, parameters: dict[str, dict[str, Any]], has_tools: bool) -> bool:
    arguments = arguments_or_none(call)
    if arguments is None:
        return False
    if not has_tools:
        return True
    if call.name not in parameters:
        return False
    import jsonschema

    schema = json_schema_form(parameters[call.name] or {"type": "object"})
    try:
        return jsonschema.Draft202012Validator(schema).is_valid(arguments)
    except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType):
        return True  # the tool's own schema is not JSON Schema (e.g. "String"): only JSON validity is known


# BFCL's and some agents' Python type names, as JSON Schema spells them ("any" has no JSON Schema type).
_JSON_SCHEMA_TYPES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "int": "integer",
    "bool": "boolean",
    "str": "string",
    "list": "array",
}
# The largest integer every JSON parser keeps exactly (IEEE-754 doubles; RFC 8259, section 6).
MAX_EXACT_INTEGER = 2**53 - 1
# Keys that describe a value without constraining it.
_ANNOTATIONS = {"description", "examples", "title", "default", "$comment"}


def json_schema_form(schema: Any, closed: bool = False) -> Any:
    """BFCL's Python type names (dict, float, tuple, any) as JSON Schema (object, number, array, no type).

    ``closed`` also makes every object refuse keys it does not list (and keep only listed ``required`` keys),
    bounds integers to the exactly representable range and drops annotations: the form a grammar enforces
    (components/slm/grammar.py)."""
    if isinstance(schema, list):
        return [json_schema_form(item, closed) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            if value != "any":
                converted[key] = _JSON_SCHEMA_TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            converted[key] = {name: json_schema_form(spec, closed) for name, spec in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            converted[key] = json_schema_form(value, closed)
        elif not (closed and key in _ANNOTATIONS):
            converted[key] = value
    if closed and converted.get("type") == "integer":  # else a grammar lets a digit loop run to the token budget
        converted.setdefault("minimum", -MAX_EXACT_INTEGER)
        converted.setdefault("maximum", MAX_EXACT_INTEGER)
    if closed and (converted.get("type") == "object" or "properties" in converted):
        converted.setdefault("type", "object")
        converted.setdefault("properties", {})
        converted.setdefault("additionalProperties", False)
        converted["required"] = [name for name in converted.get("required", []) if name in converted["properties"]]
    return converted


def score_tool_calls(
    predicted: list[ToolCall], expected: list[ToolCall] | list[ExpectedCall], tools: list[dict[str, Any]] | None = None
) -> dict[str, float]:
    """Scores of one predicted answer against the reference calls, each in [0, 1].

    ``expected`` is the reference's tool calls, or BFCL-style ``(name, {argument: [acceptable values]})`` pairs
    (a ground-truth label). ``tools`` are the tools the call offered; with them, arguments are type-checked
    against their schemas and the schema's defaults make arguments optional.

    * ``function_name_accuracy``: multiset overlap of the function names over the larger of the two counts.
    * ``argument_accuracy``: expected arguments given right, over the expected arguments (same-name calls paired
      to match the most); equals ``function_name_accuracy`` when nothing has arguments.
    * ``full_call_match``: the BFCL AST check (see the module docstring).
    * ``valid_json``: every predicted call's arguments are a JSON object (1.0 for no call when none is expected).
    * ``schema_valid``: ``valid_json``, and each call names an offered tool and validates against its schema.
    """
    reference = [item if isinstance(item, tuple) else None for item in expected]
    if any(item is None for item in reference):
        reference = expected_calls(ChatMessage(role="assistant", tool_calls=expected), tools)
    parameters = tool_parameters(tools)
    names_predicted, names_expected = Counter(c.name for c in predicted), Counter(n for n, _ in reference)
    longest = max(len(predicted), len(reference))
    name_accuracy = 1.0 if longest == 0 else sum((names_predicted & names_expected).values()) / longest

    groups: dict[str, list[Acceptable | None]] = {}
    for name, acceptable in reference:
        groups.setdefault(name, []).append(acceptable)
    total = sum(_counted_arguments(a) for group in groups.values() for a in group)
    if total == 0:
        argument_accuracy = name_accuracy
    else:
        matched = sum(
            _best_pairing([arguments_or_none(c) for c in predicted if c.name == name], group, parameters.get(name))
            for name, group in groups.items()
        )
        argument_accuracy = matched / total

    if predicted:
        valid_json = float(all(arguments_or_none(c) is not None for c in predicted))
        schema_valid = float(all(_schema_valid(c, parameters, bool(tools)) for c in predicted))
    else:
        valid_json = schema_valid = 1.0 if not reference else 0.0
    return {
        "function_name_accuracy": name_accuracy,
        "argument_accuracy": argument_accuracy,
        "full_call_match": 1.0 if calls_match(predicted, reference, tools) else 0.0,
        "valid_json": valid_json,
        "schema_valid": schema_valid,
    }
