"""The prompt an adapter was trained on, as templates other servers render: a Jinja chat template (transformers,
vLLM) and an Ollama ``TEMPLATE`` (Go), both built from the adapter's prompt spec.

An exported model is only as good as the prompt its server builds. components/slm/prompt.py lists the tools in the
system prompt as one-line signatures and writes calls as ``<tool_call>{"name", "arguments"}</tool_call>`` lines;
a server that renders the tokenizer's own template (plain ChatML for SmolLM2, no tools) would show the model a
prompt it never saw and lose the tool calls. :func:`chat_template` writes the spec's choices (system prompt kept or
dropped, tool listing, hidden tools, description cut, context window, tool-result cut) into Jinja that turns an
OpenAI request (``messages`` and ``tools``) into the messages :func:`components.slm.prompt.build_messages` builds,
then hands them to the tokenizer's own template. What Jinja cannot reproduce is reported by
:func:`template_gaps` (removing the opening several tool descriptions share; since issue 30 the older turns' values
line, string parameters by name alone and the tools listed by name), and
:func:`prompt_mismatches` compares both renderings on real calls.
"""

from __future__ import annotations

import json
from typing import Any

from components.slm.context_window import CUT_MARK
from components.slm.prompt import DEFAULT_SYSTEM_PROMPT, TOOL_RESULT_PREFIX, TOOLS_FOOTER, TOOLS_HEADER
from components.slm.prompt_pruning import PromptSpec

# components/slm/prompt.py's one-line signature, in Jinja (HF's ``tojson`` writes what json.dumps does by default).
_SIGNATURE_MACROS = r"""
{%- macro llm2slm_type(s) -%}
{%- if s is mapping and 'enum' in s -%}{%- for v in s['enum'] -%}{{ v | tojson }}{{ '|' if not loop.last }}{%- endfor -%}
{%- elif s is mapping and s.get('type', 'any') == 'array' and s.get('items') is mapping -%}array<{{ llm2slm_type(s['items']) }}>
{%- elif s is mapping and s.get('type', 'any') == 'object' and s.get('properties') is mapping -%}{{ '{' }}{{ llm2slm_params(s) }}{{ '}' }}
{%- elif s is mapping and s.get('type', 'any') is string -%}{{ s.get('type', 'any') }}
{%- elif s is mapping -%}{{ s['type'] | join('|') }}
{%- else -%}any{%- endif -%}
{%- endmacro -%}
{%- macro llm2slm_params(s) -%}
{%- set required = s.get('required') or [] -%}
{%- for name, p in (s.get('properties') or {}).items() -%}
{%- set p = p if p is mapping else {} -%}
{{ name }}{{ '' if name in required else '?' }}: {{ llm2slm_type(p) }}{{ (' = ' ~ (p['default'] | tojson)) if 'default' in p }}{{ ', ' if not loop.last }}
{%- endfor -%}
{%- endmacro -%}
{%- macro llm2slm_first_sentence(text, limit) -%}
{%- set found = namespace(end=-1) -%}
{%- for i in range(1, text | length) if found.end < 0 and text[i] in '.!?' and (i + 1 == text | length or text[i + 1] in ' \t\n\r\f\v') -%}
{%- set found.end = i + 1 -%}
{%- endfor -%}
{%- set sentence = text[:found.end] if found.end > 0 else text -%}
{{ sentence if sentence | length <= limit else (sentence[:limit].rsplit(' ', 1)[0] ~ '...') }}
{%- endmacro -%}
{%- macro llm2slm_signature(tool, with_description, limit) -%}
{%- set f = tool['function'] if 'function' in tool else tool -%}
{%- set parameters = f.get('parameters') if f.get('parameters') is mapping else {} -%}
{%- set description = (f.get('description') or '') | trim -%}
{%- if limit is not none -%}{%- set description = llm2slm_first_sentence(description, limit) -%}{%- endif -%}
{{ f.get('name', '') }}({{ llm2slm_params(parameters) }}){{ (' - ' ~ description) if description and with_description }}
{%- endmacro -%}
"""

_CONVERSATION = r"""
{%- set llm2slm = namespace(system=[], conversation=[], starts=[], messages=[], calls=[], lines=[]) -%}
{%- for m in messages if m['role'] in ('system', 'developer') -%}
{%- set llm2slm.system = llm2slm.system + [m['content'] or ''] -%}
{%- endfor -%}
{%- set llm2slm.system = llm2slm.system | join('\n') | trim -%}
{%- for m in messages if m['role'] not in ('system', 'developer') -%}
{%- if m['role'] == 'user' or loop.first -%}{%- set llm2slm.starts = llm2slm.starts + [loop.index0] -%}{%- endif -%}
{%- set llm2slm.conversation = llm2slm.conversation + [m] -%}
{%- endfor -%}
{%- if HISTORY_TURNS is not none and llm2slm.starts | length > HISTORY_TURNS + 1 -%}
{%- set llm2slm.conversation = llm2slm.conversation[llm2slm.starts[-(HISTORY_TURNS + 1)]:] -%}
{%- endif -%}
{%- for m in llm2slm.conversation -%}
{%- if m['role'] == 'tool' -%}
{%- set content = m['content'] or '' -%}
{%- if TOOL_RESULT_CHARS is not none and content | length > TOOL_RESULT_CHARS -%}
{%- set content = content[:TOOL_RESULT_CHARS] ~ CUT_OPEN ~ (content | length - TOOL_RESULT_CHARS) ~ CUT_CLOSE -%}
{%- endif -%}
{%- set llm2slm.messages = llm2slm.messages + [{'role': 'user', 'content': TOOL_RESULT_PREFIX ~ content}] -%}
{%- elif m['role'] == 'assistant' and m.get('tool_calls') -%}
{%- set llm2slm.calls = [] -%}
{%- for call in m['tool_calls'] -%}
{%- set f = call['function'] if 'function' in call else call -%}
{%- set arguments = f.get('arguments') if f.get('arguments') is not none else {} -%}
{%- set arguments = arguments if arguments is string else (arguments | tojson) -%}
{%- set llm2slm.calls = llm2slm.calls + ['<tool_call>{"name": ' ~ (f['name'] | tojson) ~ ', "arguments": ' ~ arguments ~ '}</tool_call>'] -%}
{%- endfor -%}
{%- set llm2slm.messages = llm2slm.messages + [{'role': 'assistant', 'content': llm2slm.calls | join('\n')}] -%}
{%- else -%}
{%- set llm2slm.messages = llm2slm.messages + [{'role': m['role'], 'content': m['content'] or ''}] -%}
{%- endif -%}
{%- endfor -%}
"""

_FULL_SYSTEM = r"""
{%- set system = llm2slm.system or DEFAULT_SYSTEM_PROMPT -%}
{%- if tools -%}
{%- set llm2slm.lines = [] -%}
{%- for tool in tools -%}{%- set llm2slm.lines = llm2slm.lines + [llm2slm_signature(tool, true, none)] -%}{%- endfor -%}
{%- set system = system ~ TOOLS_HEADER ~ (llm2slm.lines | join('\n')) ~ TOOLS_FOOTER -%}
{%- endif -%}
"""

_PRUNED_SYSTEM = r"""
{%- set parts = [] if DROP_SYSTEM_PROMPT else [llm2slm.system] -%}
{%- if tools and TOOL_LISTING != 'dropped' -%}
{%- set llm2slm.lines = [] -%}
{%- for tool in tools -%}
{%- set f = tool['function'] if 'function' in tool else tool -%}
{%- if f.get('name', '') not in HIDDEN_TOOLS -%}
{%- set llm2slm.lines = llm2slm.lines + [llm2slm_signature(tool, TOOL_LISTING == 'signatures', DESCRIPTION_CHARS)] -%}
{%- endif -%}
{%- endfor -%}
{%- set parts = parts + [llm2slm.lines | join('\n')] -%}
{%- endif -%}
{%- set system = parts | select | join('\n') -%}
"""

_HANDOVER = r"""
{%- set messages = [{'role': 'system', 'content': system}] + llm2slm.messages -%}
{%- set tools = none -%}
"""


def _constants(spec: PromptSpec | None) -> str:
    pruned = spec is not None and spec.pruned
    window = spec if pruned else None
    hidden = (
        sorted(set(spec.known_tools) - set(spec.called_tools))
        if pruned and spec.known_tools is not None and spec.called_tools is not None
        else []
    )
    cut_open, _, cut_close = CUT_MARK.partition("{count}")
    values = {
        "DEFAULT_SYSTEM_PROMPT": DEFAULT_SYSTEM_PROMPT,
        "TOOLS_HEADER": TOOLS_HEADER,
        "TOOLS_FOOTER": TOOLS_FOOTER,
        "TOOL_RESULT_PREFIX": TOOL_RESULT_PREFIX,
        "CUT_OPEN": cut_open,
        "CUT_CLOSE": cut_close,
        "HISTORY_TURNS": window.history_turns if window else None,
        "TOOL_RESULT_CHARS": window.max_tool_result_chars if window else None,
        "DROP_SYSTEM_PROMPT": bool(pruned and spec.drop_system_prompt),
        "TOOL_LISTING": spec.tools if pruned else "signatures",
        "HIDDEN_TOOLS": hidden,
        "DESCRIPTION_CHARS": spec.max_tool_description_chars if pruned else None,
    }
    # JSON literals are Jinja literals too (null/true/false spelled as Jinja knows them).
    return "".join(
        "{%- set " + name + " = " + json.dumps(value, ensure_ascii=False).replace("null", "none") + " -%}\n"
        if not isinstance(value, bool)
        else "{%- set " + name + " = " + ("true" if value else "false") + " -%}\n"
        for name, value in values.items()
    )


def chat_template(spec: PromptSpec | None, base_template: str) -> str:
    """A Jinja chat template that renders an OpenAI request (``messages``, ``tools``) as the prompt this adapter
    was trained on, through ``base_template`` (the tokenizer's own, e.g. ChatML)."""
    pruned = spec is not None and spec.pruned
    header = "{#- llm2slm: the prompt of components/slm/prompt.py under this adapter's prompt spec -#}\n"
    return (
        header
        + _constants(spec)
        + _SIGNATURE_MACROS.strip()
        + "\n"
        + _CONVERSATION.strip()
        + "\n"
        + (_PRUNED_SYSTEM if pruned else _FULL_SYSTEM).strip()
        + "\n"
        + _HANDOVER.strip()
        + "\n"
        + base_template
    )


def template_gaps(spec: PromptSpec | None) -> list[str]:
    """What of the spec's prompt the chat template does not reproduce (empty: the whole prompt)."""
    gaps = []
    if spec is not None and spec.pruned and spec.tools == "signatures" and spec.drop_shared_description_openings:
        gaps.append(
            "tool descriptions keep the opening several offered tools share (the spec drops it): prompts differ "
            "when two offered tools' descriptions open alike"
        )
    pruned = spec is not None and spec.pruned
    if pruned and spec.digest_older_turns:
        gaps.append(
            "the turns before the window are dropped (the spec lists the values they introduced in one line): "
            "prompts differ on calls with more earlier turns than history_turns"
        )
    if pruned and spec.untyped_strings and spec.tools in ("signatures", "bare_signatures"):
        gaps.append("string parameters are typed ': string' (the spec lists them by name alone)")
    if pruned and spec.tools == "names":
        gaps.append("tools are listed as signatures (the spec lists them by name alone)")
    return gaps


def prompt_mismatches(tokenizer: Any, template: str, records: list[Any], spec: PromptSpec | None) -> list[str]:
    """Record ids whose prompt from ``template`` (given the OpenAI request) differs from the training prompt."""
    from components.slm.prompt import render_prompt

    different = []
    for record in records:
        messages, tools = request_messages(record)
        rendered = tokenizer.apply_chat_template(
            messages, tools=tools or None, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        if rendered != render_prompt(tokenizer, record, spec):
            different.append(record.record_id)
    return different


def request_messages(record: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A logged call as the OpenAI request an agent sent: its messages (calls with JSON-string arguments, as
    OpenAI clients send them) and its tools."""
    messages = []
    for message in record.messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in message.tool_calls
            ]
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        messages.append(entry)
    return messages, list(record.tools)


def is_chatml(base_template: str) -> bool:
    return "<|im_start|>" in base_template and "<|im_end|>" in base_template


def ollama_template(spec: PromptSpec | None) -> str:
    """An Ollama ``TEMPLATE`` (Go text/template) for a ChatML model: the system prompt and tool listing as
    components/slm/prompt.py writes them, tool results as user turns, calls as ``<tool_call>`` lines (Ollama reads
    the calls back from the text between the ``{{ range .ToolCalls }}`` markers). Go ranges over a tool's
    properties in key order, so arguments are listed sorted; enums, defaults and nested types are not written."""
    pruned = spec is not None and spec.pruned
    listing = "signatures" if not pruned else spec.tools
    description = " - {{ .Function.Description }}" if listing == "signatures" else ""
    signature = (
        "{{ .Function.Name }}({{ $required := .Function.Parameters.Required }}"
        "{{ $first := true }}{{ range $name, $property := .Function.Parameters.Properties }}"
        '{{ if not $first }}, {{ end }}{{ $first = false }}{{ $name }}{{ $optional := "?" }}'
        '{{ range $required }}{{ if eq . $name }}{{ $optional = "" }}{{ end }}{{ end }}{{ $optional }}: '
        "{{ $property.Type }}{{ end }})" + description
    )
    tools_block = (
        "{{ range $i, $tool := .Tools }}{{ if $i }}\n{{ end }}{{ with $tool }}" + signature + "{{ end }}{{ end }}"
    )
    if pruned:
        system = ("" if spec.drop_system_prompt else "{{ .System }}") + (
            ""
            if listing == "dropped"
            else "{{ if .Tools }}" + ("\n" if not spec.drop_system_prompt else "") + tools_block + "{{ end }}"
        )
    else:
        header, footer = json.dumps(TOOLS_HEADER)[1:-1], json.dumps(TOOLS_FOOTER)[1:-1]
        system = (
            f"{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{DEFAULT_SYSTEM_PROMPT}{{{{ end }}}}"
            f'{{{{ if .Tools }}}}{{{{ "{header}" }}}}' + tools_block + f'{{{{ "{footer}" }}}}{{{{ end }}}}'
        )
    return (
        "<|im_start|>system\n" + system + "<|im_end|>\n"
        "{{ range .Messages }}"
        '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "tool" }}<|im_start|>user\n' + TOOL_RESULT_PREFIX + "{{ .Content }}<|im_end|>\n"
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
        "{{ if .ToolCalls }}{{ range $i, $call := .ToolCalls }}{{ if $i }}\n{{ end }}"
        '<tool_call>{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}</tool_call>'
        "{{ end }}{{ else }}{{ .Content }}{{ end }}<|im_end|>\n"
        "{{ end }}{{ end }}<|im_start|>assistant\n"
    )
