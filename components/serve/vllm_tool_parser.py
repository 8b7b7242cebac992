"""vLLM tool-parser plugin for llm2slm's SLMs (copied into every vLLM bundle as ``llm2slm_tool_parser.py``).

The SLMs write Hermes 2 Pro's call format, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, which
vLLM's ``hermes`` parser reads; but that parser looks the two tags up as single tokens when it starts and refuses a
tokenizer without them (SmolLM2's spells them with several tokens). ``--tool-parser-plugin llm2slm_tool_parser.py
--tool-call-parser llm2slm_hermes`` registers the same parsing on the finished text, for non-streaming requests
(streamed answers get no tool-call deltas from it).

Self-contained on purpose (stdlib + vLLM): :func:`extract_calls` is what the parser does, and is tested without vLLM.
"""

from __future__ import annotations

import json
import re
from typing import Any

# vLLM's hermes parser's pattern: a closed call, or an unterminated last one.
TOOL_CALL_PATTERN = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


def extract_calls(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """(calls as ``{"name", "arguments"}`` with arguments a JSON string, the text before the first call or None)."""
    if "<tool_call>" not in text:
        return [], text
    calls = []
    for closed, open_ended in TOOL_CALL_PATTERN.findall(text):
        body = json.loads(closed or open_ended)
        calls.append({"name": body["name"], "arguments": json.dumps(body["arguments"], ensure_ascii=False)})
    content = text[: text.find("<tool_call>")]
    return calls, content if content.strip() else None


try:  # only inside vLLM
    try:
        from vllm.tool_parsers import ToolParser, ToolParserManager  # vLLM >= 0.12
    except ImportError:
        from vllm.entrypoints.openai.tool_parsers import ToolParser, ToolParserManager
    from vllm.entrypoints.openai.protocol import ExtractedToolCallInformation, FunctionCall, ToolCall
except ImportError:
    ToolParser = None

if ToolParser is not None:

    @ToolParserManager.register_module(["llm2slm_hermes"])
    class Llm2slmHermesToolParser(ToolParser):
        def extract_tool_calls(self, model_output: str, request: Any) -> Any:
            try:
                calls, content = extract_calls(model_output)
            except (ValueError, KeyError, TypeError):
                return ExtractedToolCallInformation(tools_called=False, tool_calls=[], content=model_output)
            return ExtractedToolCallInformation(
                tools_called=bool(calls),
                tool_calls=[
                    ToolCall(type="function", function=FunctionCall(name=c["name"], arguments=c["arguments"]))
                    for c in calls
                ],
                content=content,
            )

        def extract_tool_calls_streaming(self, *args: Any, **kwargs: Any) -> Any:
            return None  # non-streaming only; see the module docstring
