"""Prompt pruning: the compact prompt a cluster's specialised SLM is trained and served on.

Inside one cluster the system prompt and the tool schemas barely change, yet they are most of every prompt. A
model that only ever serves this cluster does not need them: the static system prompt is dropped, the tools are
listed as bare signatures (or not at all when the whole cluster uses one tool set), and the instructions around
the tool list go too. What was dropped is decided once from the training calls and written as a small
``prompt_spec.json`` beside the adapter, so that training, evaluation and the router build the same prompt through
one function, :func:`load_prompt_transform`. A call that does not fit the spec (another system prompt, another tool
set) is recognisable with :func:`spec_accepts`, so a router can send it to the LLM instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.slm.prompt import build_messages, tool_signature

PROMPT_SPEC_FILE = "prompt_spec.json"
ToolListing = Literal["signatures", "bare_signatures", "dropped"]


class PruningSettings(StepConfig):
    enabled: bool = True
    drop_static_system_prompt: bool = True
    tool_descriptions: bool = True  # keep each tool's one-line description in its signature
    drop_single_tool_set: bool = True  # no tool listing at all when every call offers the same tools
    min_records: int = 5  # below this, nothing counts as static: too few calls to tell


class PromptSpec(BaseModel):
    """What the compact prompt keeps, and how the model answers; ``None`` in place of a spec means the full prompt
    and nothing known about the answers (a base model's)."""

    version: int = 1
    # False: the model was trained on the full prompt (pruning off); the spec then only describes its answers.
    pruned: bool = True
    drop_system_prompt: bool = False
    system_prompt_sha256: str | None = None  # of the dropped prompt, so a router can check a call carries it
    tools: ToolListing = "signatures"
    tool_set_sha256: str | None = None  # of the one tool set, when the listing is dropped
    # What the model answers: "tool_calls" when every training answer was a call, so decoding may require one.
    answers: Literal["any", "tool_calls"] = "any"
    # Tokens an answer may take (the longest training answer with a margin); generation stops there.
    max_answer_tokens: int | None = None
    # Calls an answer may make (the most a training answer made, with a margin); the grammar stops there.
    max_tool_calls: int | None = None

    def system_content(self, record: CallRecord) -> str:
        """The system message of the compact prompt: the kept system prompt and the tool listing, no more."""
        parts = [] if self.drop_system_prompt else [record.system_prompt.strip()]
        if record.tools and self.tools != "dropped":
            with_description = self.tools == "signatures"
            parts.append("\n".join(tool_signature(tool, with_description) for tool in record.tools))
        return "\n".join(part for part in parts if part)


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def derive_prompt_spec(records: list[CallRecord], settings: PruningSettings) -> PromptSpec:
    """The spec for a cluster's training calls; with pruning off it keeps the full prompt and records the answers."""
    answers = "tool_calls" if records and all(record.response.tool_calls for record in records) else "any"
    if not settings.enabled:
        return PromptSpec(pruned=False, answers=answers)
    enough = len(records) >= settings.min_records
    system_prompts = {record.system_prompt.strip() for record in records}
    static_system = enough and settings.drop_static_system_prompt and len(system_prompts) == 1
    tool_sets = {_sha256(record.tools) for record in records}
    single_tool_set = enough and settings.drop_single_tool_set and len(tool_sets) == 1 and bool(records[0].tools)
    return PromptSpec(
        drop_system_prompt=static_system,
        system_prompt_sha256=_sha256(next(iter(system_prompts))) if static_system else None,
        tools="dropped" if single_tool_set else "signatures" if settings.tool_descriptions else "bare_signatures",
        tool_set_sha256=next(iter(tool_sets)) if single_tool_set else None,
        answers=answers,
    )


def spec_accepts(spec: PromptSpec | None, record: CallRecord) -> bool:
    """Whether the compact prompt loses nothing for this call: what it dropped is what the call carries."""
    if spec is None or not spec.pruned:
        return True
    if spec.drop_system_prompt and _sha256(record.system_prompt.strip()) != spec.system_prompt_sha256:
        return False
    return spec.tools != "dropped" or _sha256(record.tools) == spec.tool_set_sha256


def save_prompt_spec(spec: PromptSpec | None, folder: Path) -> None:
    """Write the spec into a model or adapter folder; no file means the full prompt (a base model's)."""
    path = Path(folder) / PROMPT_SPEC_FILE
    if spec is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(spec.model_dump_json(indent=2))


def load_prompt_spec(folder: str | Path | None) -> PromptSpec | None:
    if folder is None:
        return None
    path = Path(folder) / PROMPT_SPEC_FILE
    return PromptSpec.model_validate_json(path.read_text()) if path.exists() else None


def load_prompt_transform(folder: str | Path | None) -> Callable[[CallRecord], list[dict[str, str]]]:
    """The call -> chat messages function a model folder was trained with (the full prompt when it has no spec)."""
    return partial(build_messages, spec=load_prompt_spec(folder))
