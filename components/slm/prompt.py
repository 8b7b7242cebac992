"""The prompt/target contract: how a logged call becomes the SLM's prompt and its answer a target, and back.

A tool call is written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one per call, one line each)
and the available tools are listed in the system prompt, which works with chat templates that know nothing of tools.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.slm.prompt_spec import PromptSpec
from components.slm.tool_signatures import one_line_json as _dump
from components.slm.tool_signatures import tool_name as tool_name  # re-exported: read from here before
from components.slm.tool_signatures import tool_signature as tool_signature

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
TOOLS_HEADER = "\n\nYou can call these functions:\n<tools>\n"
TOOLS_FOOTER = (
    "\n</tools>\nArguments marked ? are optional. To call functions, reply only with one "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call> per call.'
)
TOOL_RESULT_PREFIX = "Tool result: "
# An unterminated last call (generation cut by max_new_tokens or a forgotten end tag) still counts.
_TOOL_CALL_PATTERN = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_CODE_FENCE_PATTERN = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def build_messages(record: CallRecord, spec: PromptSpec | None = None) -> list[dict[str, str]]:
    """The chat messages the SLM sees for a call: tools in the system prompt, tool turns as plain text.

    Without a spec (or with one trained unpruned) this is the full prompt, what a base model needs; with one, the
    cluster's compact prompt and context window (components/slm/prompt_pruning.py). S4 (through
    :func:`render_prompt`), S5, S6, the registered pyfunc and the router all build prompts here.
    """
    if spec is not None and spec.pruned:
        system = spec.system_content(record)
    else:
        system = record.system_prompt.strip() or DEFAULT_SYSTEM_PROMPT
        if record.tools:
            system += TOOLS_HEADER + "\n".join(tool_signature(tool) for tool in record.tools) + TOOLS_FOOTER
    messages = [{"role": "system", "content": system}]
    for message in record.messages if spec is None else spec.conversation(record):
        if message.role in ("system", "developer"):
            continue
        if message.role == "tool":
            messages.append({"role": "user", "content": TOOL_RESULT_PREFIX + (message.content or "")})
        elif message.role == "assistant":
            messages.append({"role": "assistant", "content": render_target(message)})
        else:
            messages.append({"role": message.role, "content": message.content or ""})
    return messages


def render_target(message: ChatMessage) -> str:
    """The text an SLM should produce for this assistant message."""
    if not message.tool_calls:
        return message.content or ""
    rendered = []
    for call in message.tool_calls:
        try:
            arguments: Any = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = call.arguments  # kept verbatim (as a JSON string) so the flaw stays visible
        rendered.append(f"<tool_call>{_dump({'name': call.name, 'arguments': arguments})}</tool_call>")
    return "\n".join(rendered)


def _call_from_json(value: Any) -> ToolCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return ToolCall(name=value["name"], arguments=arguments if isinstance(arguments, str) else _dump(arguments))


def _calls_from_json_text(text: str) -> list[ToolCall]:
    """Calls in a JSON object or list, tolerating text after the first JSON value."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return []
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return []
    values = value if isinstance(value, list) else [value]
    calls = [_call_from_json(item) for item in values]
    return [call for call in calls if call is not None]


def parse_completion(text: str) -> ChatMessage:
    """The assistant message a completion stands for: the inverse of :func:`render_target`, tolerant of noise."""
    stripped = text.strip()
    tagged = _TOOL_CALL_PATTERN.findall(stripped)
    if tagged:
        calls = [call for body in tagged for call in _calls_from_json_text(body)]
        rest = _TOOL_CALL_PATTERN.sub("", stripped).strip()
        return ChatMessage(role="assistant", content=rest or None, tool_calls=calls)
    fenced = _CODE_FENCE_PATTERN.match(stripped)
    bare = fenced.group(1) if fenced else stripped
    if bare.startswith(("{", "[")):
        calls = _calls_from_json_text(bare)
        if calls:
            return ChatMessage(role="assistant", tool_calls=calls)
    return ChatMessage(role="assistant", content=stripped)


def render_prompt(tokenizer: PreTrainedTokenizerBase, record: CallRecord, spec: PromptSpec | None = None) -> str:
    return tokenizer.apply_chat_template(build_messages(record, spec), tokenize=False, add_generation_prompt=True)
