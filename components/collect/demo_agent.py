"""Demo agent log: BFCL's multi-turn conversations replayed as the LLM calls a real tool-using agent makes.

Each of BFCL's ``multi_turn_base`` conversations (a user asking, turn after turn, for work on a file system, a car,
a trading account, travel bookings, tickets, messages, posts or maths) is run for real: fresh instances of its
involved API classes, loaded with the conversation's ``initial_config``, execute every ground-truth call of every
turn, and the log records what the agent's LLM saw and answered at each step:

* the prompt: a system prompt, the conversation so far (user turns, earlier calls, their tool results, earlier
  answers) and the tools of the involved classes (OpenAI schemas converted from BFCL's function docs);
* the answer: **one assistant message with one tool call per ground-truth call**. BFCL's answer for a turn is an
  ordered sequence that an agent runs step by step (``cd`` before ``ls``, a login before a booking: later calls
  depend on the state and results of earlier ones), so each call is its own step and its own LLM call, followed
  by its tool result; no step is merged into a parallel call;
* a short text answer closing each turn, written from the turn's last tool result (BFCL has no assistant text),
  and a clarifying question for a turn with no ground-truth call.

About a third of the conversations (``demo_data.chat_form_share``) are written as one multi-turn chat line
(``{"id", "messages", "tools", ...}``), the rest as one request/response line per call, as a logging proxy writes
them, in arrival order; some of those log a ``session_id``, the others leave S1 to group them by their history's
prefix. A share of the chat lines stops after a tool result (captured mid-loop). Synthetic PII goes into some user
turns, and a few malformed lines are mixed in for S1's quarantine. Everything is seeded: the same config gives the
same lines (the API classes seed their own randomness from ``initial_config``).

The ground-truth call strings are parsed with ``ast`` (literal arguments only), never evaluated; positional
arguments are named from the method's signature. The API modules are loaded from the pinned wheel's extracted
files by path, without bfcl_eval's package ``__init__`` or its LLM SDK dependencies (math_api needs ``mpmath``).
Usage figures are estimates as in demo_data.py (~4 characters per token); latency is synthetic.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import json
import math
import random
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from components.collect.demo_parts import (
    LOG_DAYS,
    LOG_END,
    DemoDataConfig,
    estimated_tokens,
    fake_person,
    malformed_line,
    openai_tool,
    read_json_lines,
    stable_hex,
    time_ordered,
    with_pii,
)
from components.core.assets import asset_path

AGENT = "bfcl-multi-turn-agent"
CATEGORY = "multi_turn_base"
SYSTEM_PROMPT = (
    "You are an assistant that works through the user's requests with the tools provided. Make one function call "
    "at a time, read its result, and continue until the request is done; then tell the user briefly what happened. "
    "If the request lacks something you need, ask for it instead of guessing."
)
# The modules' own package path: gorilla_file_system & co. import long_context through it.
BACKEND_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
API_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
FUNC_DOCS = {class_name: f"{module}.json" for class_name, module in API_MODULES.items()}
STATELESS_CLASSES = {"MathAPI"}  # as BFCL: no scenario to load
ANSWER_CHARS = 240  # a closing answer quotes at most this much of the last tool result


# --- the API classes --------------------------------------------------------------------------------------------


def load_api_classes(api_dir: Path | None = None) -> dict[str, type]:
    """The eight executable API classes, loaded by file path from the extracted wheel."""
    api_dir = api_dir or asset_path("bfcl-eval-api")
    # Registered under its own package name so the modules' ``from bfcl_eval...long_context import`` finds it
    # without importing bfcl_eval's __init__ (which pulls its LLM SDKs).
    _load_module(f"{BACKEND_PACKAGE}.long_context", api_dir / "long_context.py")
    classes = {}
    for class_name, module_name in API_MODULES.items():
        module = _load_module(f"{BACKEND_PACKAGE}.{module_name}", api_dir / f"{module_name}.py")
        classes[class_name] = getattr(module, class_name)
    return classes


def _load_module(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    if not path.exists():
        raise FileNotFoundError(f"no BFCL API module {path.name} in {path.parent}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[name]
        raise
    return module


def parse_call_string(call: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``"mv(source='a', destination='b')"`` -> ("mv", [], {...}); only literal arguments, never evaluated."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"not a call: {call!r} ({error.msg})") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {call!r}")
    try:
        args = [ast.literal_eval(arg) for arg in node.args]
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords if keyword.arg}
    except ValueError:
        raise ValueError(f"a call with a non-literal argument: {call!r}") from None
    if len(kwargs) != len(node.keywords):
        raise ValueError(f"a call with **arguments: {call!r}")
    return node.func.id, args, kwargs


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    return value


class ApiSession:
    """Fresh instances of one conversation's API classes; runs calls and returns their results as BFCL logs them
    (a string as it is, a dict as JSON, anything else as ``str``; an exception as ``Error during execution: ...``)."""

    def __init__(self, classes: dict[str, type], involved: list[str], initial_config: dict[str, Any]):
        unknown = [name for name in involved if name not in classes]
        if unknown:
            raise ValueError(f"unknown API classes {unknown}; known: {sorted(classes)}")
        self.methods: dict[str, Any] = {}
        for class_name in involved:
            instance = classes[class_name]()
            if class_name not in STATELESS_CLASSES:
                instance._load_scenario(copy.deepcopy(initial_config.get(class_name, {})), long_context=False)
            for name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not name.startswith("_"):
                    self.methods[name] = method

    def named_arguments(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name (positional ones named from the method's signature), as JSON values."""
        if name not in self.methods:
            raise ValueError(f"no tool '{name}' in this conversation's API classes")
        parameters = list(inspect.signature(self.methods[name]).parameters)
        if len(args) > len(parameters):
            raise ValueError(f"{name} takes {len(parameters)} arguments, the call gives {len(args)} positionally")
        return _json_safe({**dict(zip(parameters, args)), **kwargs})

    def run(self, name: str, arguments: dict[str, Any]) -> str:
        try:
            result = self.methods[name](**arguments)
        except Exception as error:  # the agent sees a failed call's error, as in BFCL's own runs
            return f"Error during execution: {error}"
        if isinstance(result, str):
            return result
        if isinstance(result, dict):
            try:
                return json.dumps(result)
            except TypeError:
                return str(result)
        return str(result)


def load_conversations(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """BFCL's multi-turn conversations, each with its per-turn ground truth attached."""
    data_dir = data_dir or asset_path("bfcl-eval")
    questions = data_dir / f"BFCL_v4_{CATEGORY}.json"
    if not questions.exists():
        raise FileNotFoundError(f"no BFCL multi-turn data ({questions.name}) in {data_dir}")
    answers = {a["id"]: a["ground_truth"] for a in read_json_lines(data_dir / "possible_answer" / questions.name)}
    conversations = []
    for item in read_json_lines(questions):
        truth = answers.get(item["id"])
        if truth is None or len(truth) != len(item["question"]):
            raise ValueError(f"{item['id']}: the ground truth does not have one entry per user turn")
        conversations.append({**item, "ground_truth": truth})
    return conversations


def load_tools(involved: list[str], excluded: list[str], data_dir: Path | None = None) -> list[dict[str, Any]]:
    """The OpenAI tools of the involved classes, minus the conversation's excluded functions."""
    doc_dir = (data_dir or asset_path("bfcl-eval")) / "multi_turn_func_doc"
    tools = []
    for class_name in involved:
        for doc in read_json_lines(doc_dir / FUNC_DOCS[class_name]):
            if doc["name"] not in excluded:
                tools.append(openai_tool(doc))
    return tools


# --- one conversation as steps ----------------------------------------------------------------------------------


@dataclass
class Step:
    """One LLM call: the messages before it and the assistant message it answered with."""

    history: list[dict[str, Any]]
    answer: dict[str, Any]
    task: str  # the API class of the called tool, or 'text:answer' / 'text:clarify' (the known group)


@dataclass
class Conversation:
    bfcl_id: str
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def closing_answer(last_result: str, rng: random.Random) -> str:
    """A short answer for the user, written from the turn's last tool result."""
    try:
        value = json.loads(last_result)
    except (json.JSONDecodeError, TypeError):
        value = last_result
    if isinstance(value, dict) and "error" in value:
        return f"I could not finish that: {str(value['error'])[:ANSWER_CHARS]}"
    if isinstance(value, str) and value.startswith("Error during execution"):
        return f"That did not work. {value[:ANSWER_CHARS]}"
    if isinstance(value, dict) and value:
        summary = "; ".join(f"{key}: {json.dumps(item)}" for key, item in list(value.items())[:4])
    elif value in (None, "", "None", {}, []):
        summary = ""
    else:
        summary = str(value)
    summary = summary if len(summary) <= ANSWER_CHARS else summary[: ANSWER_CHARS - 3] + "..."
    lead = rng.choice(["Done.", "All set.", "That's done.", "Finished."])
    return f"{lead} Result: {summary}" if summary else f"{lead} Anything else?"


def clarifying_question(rng: random.Random) -> str:
    return rng.choice(
        [
            "I can't do that with what I have yet. Could you tell me the missing details, such as which item, "
            "file or account you mean?",
            "Before I go ahead: which exact item should I use? I don't want to guess.",
            "I need a bit more information to do this. Could you give me the specific values to use?",
        ]
    )


def play_conversation(
    item: dict[str, Any],
    classes: dict[str, type],
    tools: list[dict[str, Any]],
    pii_turn: int | None,
    seed: int,
    rng: random.Random,
) -> Conversation:
    """Run every ground-truth call of every turn and record each LLM call the agent made."""
    session = ApiSession(classes, item["involved_classes"], item.get("initial_config") or {})
    conversation = Conversation(item["id"], tools, [{"role": "system", "content": SYSTEM_PROMPT}])
    messages = conversation.messages
    for turn, (user_messages, calls) in enumerate(zip(item["question"], item["ground_truth"])):
        for message in user_messages:
            content = message["content"]
            if turn == pii_turn and message["role"] == "user":
                content = with_pii(content, rng)
            messages.append({"role": message["role"], "content": content})
        last_result = ""
        for number, call in enumerate(calls):
            name, args, kwargs = parse_call_string(call)
            arguments = session.named_arguments(name, args, kwargs)
            call_id = f"call_{stable_hex(seed, item['id'], turn, number)}"
            answer = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
                ],
            }
            conversation.steps.append(Step(list(messages), answer, _owner_class(session, name)))
            messages.append(answer)
            last_result = session.run(name, arguments)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": last_result})
        text, task = (
            (closing_answer(last_result, rng), "text:answer") if calls else (clarifying_question(rng), "text:clarify")
        )
        answer = {"role": "assistant", "content": text}
        conversation.steps.append(Step(list(messages), answer, task))
        messages.append(answer)
    return conversation


def _owner_class(session: ApiSession, name: str) -> str:
    # The class of the bound method that runs the call (the last involved class wins a shared name, as in BFCL).
    return type(session.methods[name].__self__).__name__


# --- log lines ----------------------------------------------------------------------------------------------------


def _request_line(
    conversation: Conversation,
    index: int,
    step: Step,
    when: Any,
    session_id: str | None,
    cfg: DemoDataConfig,
    rng,
    metadata: dict[str, Any] | None = None,
) -> tuple[str, str, float]:
    request = {"model": cfg.llm_model, "messages": step.history, "tools": conversation.tools}
    completion = step.answer.get("tool_calls") or step.answer["content"]
    prompt_tokens, completion_tokens = estimated_tokens(request), estimated_tokens(completion)
    # Long agent prompts: prefill grows with the prompt, generation with the answer.
    latency_ms = rng.lognormvariate(math.log(400 + 0.05 * prompt_tokens + 8 * completion_tokens), 0.3)
    record_id = f"req-{stable_hex(cfg.seed, conversation.bfcl_id, index, length=16)}"
    line: dict[str, Any] = {
        "id": record_id,
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "agent": AGENT,
    }
    if session_id:
        line["session_id"] = session_id
    if metadata:
        line["metadata"] = metadata
    line.update(
        {
            "request": request,
            "response": {
                "id": f"chatcmpl-{stable_hex('response', cfg.seed, conversation.bfcl_id, index)}",
                "object": "chat.completion",
                "created": int(when.timestamp()),
                "model": cfg.llm_model,
                "choices": [
                    {
                        "index": 0,
                        "message": step.answer,
                        "finish_reason": "tool_calls" if step.answer.get("tool_calls") else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            "latency_ms": round(latency_ms, 1),
        }
    )
    return json.dumps(line), record_id, latency_ms


def _chat_line(conversation: Conversation, truncate: bool, when: Any, cfg: DemoDataConfig, rng) -> tuple[str, list]:
    """One multi-turn chat line and the ids S1 gives its calls (``<id>#m<index>`` per assistant message)."""
    messages = conversation.messages
    if truncate:
        # Captured mid-loop: the log stops right after one of the tool results (not the first step's, so some
        # calls remain before it).
        tool_ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "tool" and i > 3]
        if tool_ends:
            messages = messages[: rng.choice(tool_ends)]
    line_id = f"conv-{stable_hex(cfg.seed, conversation.bfcl_id, length=16)}"
    line = {
        "id": line_id,
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "agent": AGENT,
        "model": cfg.llm_model,
        "messages": messages,
        "tools": conversation.tools,
    }
    answered = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    record_ids = [line_id if len(answered) == 1 else f"{line_id}#m{i}" for i in answered]
    return json.dumps(line), record_ids


def build_agent_log(
    cfg: DemoDataConfig, data_dir: Path | None = None, api_dir: Path | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """The agent log's lines and, per call, its known groups: ``record_id``, ``category``, ``bfcl_id``,
    ``conversation`` and ``task`` (the API class of the called tool, or ``text:answer`` / ``text:clarify``)."""
    rng = random.Random(cfg.seed)
    classes = load_api_classes(api_dir)
    items = load_conversations(data_dir)
    items = sorted(rng.sample(items, min(cfg.conversations, len(items))), key=lambda item: item["id"])
    n = len(items)
    with_pii_indices = set(rng.sample(range(n), round(cfg.pii_share * n)))
    chat_indices = sorted(rng.sample(range(n), round(cfg.chat_form_share * n)))
    truncated = set(rng.sample(chat_indices, round(cfg.truncated_share * len(chat_indices))))
    lines: list[str] = []
    groups: list[dict[str, str]] = []
    for index, item in enumerate(items):
        tools = load_tools(item["involved_classes"], item.get("excluded_function") or [], data_dir)
        pii_turn = rng.randrange(len(item["question"])) if index in with_pii_indices else None
        conversation = play_conversation(item, classes, tools, pii_turn, cfg.seed, rng)
        start = LOG_END - timedelta(seconds=rng.uniform(3600, LOG_DAYS * 86400))
        if index in chat_indices:
            line, record_ids = _chat_line(conversation, index in truncated, start, cfg, rng)
            lines.append(line)
            steps = conversation.steps[: len(record_ids)]
        else:
            # Sessions logged by id for half of the proxy-form conversations; the rest are grouped by S1.
            session_id = (
                f"sess-{stable_hex('session', cfg.seed, item['id'], length=12)}" if rng.random() < 0.5 else None
            )
            side = None
            if session_id and index in with_pii_indices:
                # Personal data beside the prompt, as real front ends log it: a session named after the user's
                # email and a customer object in the metadata (its own seeded draw: the log's stream is unchanged).
                person = fake_person(random.Random(f"{cfg.seed}|{item['id']}|side"))
                session_id = f"web:{person['email']}:{index}"
                side = {"customer": {key: person[key] for key in ("name", "email", "phone")}}
            record_ids, when = [], start
            for number, step in enumerate(conversation.steps):
                line, record_id, latency_ms = _request_line(
                    conversation, number, step, when, session_id, cfg, rng, side
                )
                lines.append(line)
                record_ids.append(record_id)
                # The next call follows the tool's run, or the user's next message after an answer.
                pause = rng.uniform(0.2, 2.0) if step.answer.get("tool_calls") else rng.uniform(8, 90)
                when += timedelta(milliseconds=latency_ms, seconds=pause)
            steps = conversation.steps
        groups.extend(
            {"record_id": rid, "category": CATEGORY, "bfcl_id": item["id"], "conversation": item["id"], "task": s.task}
            for rid, s in zip(record_ids, steps)
        )
    lines = time_ordered(lines)
    request_lines = [line for line in lines if line.startswith('{"id": "req-')]
    for kind in range(cfg.malformed_lines):
        lines.insert(rng.randint(0, len(lines)), malformed_line(kind, rng.choice(request_lines)))
    return lines, groups
