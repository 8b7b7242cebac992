"""Prompt pruning: the compact prompt a cluster's specialised SLM is trained and served on.

Inside one cluster the system prompt and the tool schemas barely change, yet they are most of every prompt. A
model that only ever serves this cluster does not need them: the static system prompt is dropped, the tools are
listed as bare signatures (or not at all when the whole cluster uses one tool set), and the instructions around
the tool list go too. What was dropped is decided once from the training calls and written as a small
``prompt_spec.json`` beside the adapter, so that training, evaluation and the router build the same prompt through
one function, :func:`load_prompt_transform`. A call that does not fit the spec (another system prompt, another tool
set, a tool the cluster's training calls were never offered) is recognisable with :func:`spec_accepts` (the reason:
:func:`spec_refusal`), so a router can send it to the LLM instead.

Multi-turn calls also get a context window (components/slm/context_window.py): the current turn, the last few
earlier turns, long tool results cut; and of the tools an agent offers, only those the cluster's training calls
call are listed, since an agent offers every tool of its API classes (3-9k tokens of docs for two classes) while
one task uses a handful. :func:`prompt_token_report` says what that saves, and how many calls still exceed S5's
``max_length``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.slm.prompt import build_messages, render_target

# The spec, its file and the tool-description helpers are read from here by S5, S6, serving and tests since
# before they had modules of their own (re-exported).
from components.slm.prompt_spec import PROMPT_SPEC_FILE as PROMPT_SPEC_FILE
from components.slm.prompt_spec import PromptSpec as PromptSpec
from components.slm.prompt_spec import load_prompt_spec as load_prompt_spec
from components.slm.prompt_spec import save_prompt_spec as save_prompt_spec
from components.slm.tool_signatures import distinct_descriptions as distinct_descriptions
from components.slm.tool_signatures import first_sentence as first_sentence
from components.slm.tool_signatures import tool_name


class PruningSettings(StepConfig):
    enabled: bool = True
    drop_static_system_prompt: bool = True
    tool_descriptions: bool = True  # keep each tool's one-line description in its signature
    untyped_strings: bool = True  # list string parameters by name alone: ~2 tokens a parameter
    drop_single_tool_set: bool = True  # no tool listing at all when every call offers the same tools
    min_records: int = 5  # below this, nothing counts as static: too few calls to tell
    # The context window (components/slm/context_window.py); null = no limit.
    # Earlier turns kept before the current one. 0 on the demo agent log (SmolLM2 tokenizer, tight clusters): median
    # 174 tokens per call, p90 372, 5 % over max_length 512; 1 earlier turn: median 338, p90 596, 16 % over.
    history_turns: int | None = 1
    max_tool_result_chars: int | None = 300  # a longer tool result is cut here, with a mark saying so
    # The turns before those as one line of the values they introduced (requests, call arguments, result fields),
    # at most max_digest_chars characters (newest first); false: dropped. Why: the values an answer needs from
    # further back (benchmarks/prompt_window.py, docs/benchmarks.md).
    digest_older_turns: bool = True
    max_digest_chars: int | None = 400
    # List only the offered tools that the cluster's training answers call (tools never offered in training stay
    # listed: nothing is known about them, and spec_accepts already sends such a call to the LLM).
    only_called_tools: bool = True
    # Leave out the opening a tool's description shares with another offered tool's (an API class's preamble,
    # e.g. BFCL's "This tool belongs to the vehicle control system, which allows ...": ~60 % of its tool docs).
    drop_shared_description_openings: bool = True
    max_tool_description_chars: int | None = 100  # a description's first sentence, cut here if longer; null: whole
    tool_names_only: bool = False  # list the tools by name alone (the leanest listing; the last fitting step)
    # With S5's tokenizer and max_length known, the spec is fitted: when fewer than this share of the training
    # calls fit the window, the leaner recipes of FITTING_STEPS are tried in turn and the first that fits is kept
    # (else the leanest). null: the settings as they are. Issue 30: a cluster none of whose calls fit never trains.
    min_window_share: float | None = 0.9


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# Leaner recipes, in order, for a cluster whose calls do not fit S5's window: the current turn only (the older
# ones as their values), then signatures without descriptions, then the tools by name alone. Demo log, 2026-12-08
# (benchmarks/prompt_window.py, docs/benchmarks.md): the travel cluster fits only at the last step.
FITTING_STEPS: tuple[dict[str, Any], ...] = (
    {"history_turns": 0},
    {"history_turns": 0, "tool_descriptions": False},
    {"history_turns": 0, "tool_descriptions": False, "tool_names_only": True},
)


def derive_prompt_spec(
    records: list[CallRecord],
    settings: PruningSettings,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> PromptSpec:
    """The spec for a cluster's training calls; with pruning off it keeps the full prompt and records the answers.

    Given the ``tokenizer`` and ``max_length`` S5 trains with, it is fitted (``settings.min_window_share``): the
    configured recipe, else the first of :data:`FITTING_STEPS` under which that share of the calls fits."""
    spec = _spec_for(records, settings)
    if tokenizer is None or max_length is None or settings.min_window_share is None or not spec.pruned:
        return spec
    for step, leaner in enumerate((None, *FITTING_STEPS)):
        spec = _spec_for(records, settings if leaner is None else settings.model_copy(update=leaner))
        spec.fitting_step = step
        fitting = sum(fits_window(record, tokenizer, spec, max_length) for record in records)
        if records and fitting >= settings.min_window_share * len(records):
            break
    return spec


def _spec_for(records: list[CallRecord], settings: PruningSettings) -> PromptSpec:
    answers = "tool_calls" if records and all(record.response.tool_calls for record in records) else "any"
    if not settings.enabled:
        return PromptSpec(pruned=False, answers=answers)
    enough = len(records) >= settings.min_records
    system_prompts = {record.system_prompt.strip() for record in records}
    static_system = enough and settings.drop_static_system_prompt and len(system_prompts) == 1
    tool_sets = {_sha256(record.tools) for record in records}
    single_tool_set = enough and settings.drop_single_tool_set and len(tool_sets) == 1 and bool(records[0].tools)
    known = sorted({tool_name(tool) for record in records for tool in record.tools})
    called = sorted({call.name for record in records for call in record.response.tool_calls})
    return PromptSpec(
        drop_system_prompt=static_system,
        system_prompt_sha256=_sha256(next(iter(system_prompts))) if static_system else None,
        tools="dropped"
        if single_tool_set
        else "names"
        if settings.tool_names_only
        else "signatures"
        if settings.tool_descriptions
        else "bare_signatures",
        tool_set_sha256=next(iter(tool_sets)) if single_tool_set else None,
        answers=answers,
        history_turns=settings.history_turns,
        max_tool_result_chars=settings.max_tool_result_chars,
        untyped_strings=settings.untyped_strings,
        digest_older_turns=settings.digest_older_turns and settings.history_turns is not None,
        max_digest_chars=settings.max_digest_chars,
        known_tools=known if settings.only_called_tools and enough else None,
        called_tools=called if settings.only_called_tools and enough else None,
        drop_shared_description_openings=settings.drop_shared_description_openings,
        max_tool_description_chars=settings.max_tool_description_chars,
    )


def spec_refusal(spec: PromptSpec | None, record: CallRecord) -> str | None:
    """Why the compact prompt would lose something this call needs, or ``None`` when it loses nothing: the call
    carries what the spec dropped, and offers no tool the cluster's training calls were not offered (the model
    never learnt when to call it, so such a call goes to the LLM)."""
    if spec is None or not spec.pruned:
        return None
    if spec.drop_system_prompt and _sha256(record.system_prompt.strip()) != spec.system_prompt_sha256:
        return "another system prompt than the one the model was trained without"
    if spec.tools == "dropped" and _sha256(record.tools) != spec.tool_set_sha256:
        return "another tool set than the one the model was trained without listing"
    offered = {tool_name(tool) for tool in record.tools}
    unknown = sorted(offered - set(spec.known_tools)) if spec.known_tools is not None else []
    if unknown:
        return f"{len(unknown)} tool(s) unknown to the cluster: {', '.join(unknown[:5])}"
    return None


def spec_accepts(spec: PromptSpec | None, record: CallRecord) -> bool:
    """Whether the compact prompt loses nothing for this call (see :func:`spec_refusal`)."""
    return spec_refusal(spec, record) is None


def call_tokens(record: CallRecord, tokenizer: Any, spec: PromptSpec | None = None) -> int:
    """Tokens of the call as trained: its prompt under ``spec`` and the LLM's answer, in the chat template."""
    messages = [*build_messages(record, spec), {"role": "assistant", "content": render_target(record.response)}]
    encoded = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def fits_window(record: CallRecord, tokenizer: Any, spec: PromptSpec | None, max_length: int) -> bool:
    """Whether S5 trains on the call: its prompt under ``spec`` and its answer within ``max_length`` tokens."""
    return call_tokens(record, tokenizer, spec) <= max_length


class TrainingWindow(BaseModel):
    """S5's training window as the steps before it see it: the compact prompt's settings and S5's max_length."""

    prompt_pruning: PruningSettings = PruningSettings()
    max_length: int = 512


def calls_in_window(records: list[CallRecord], tokenizer: Any, window: TrainingWindow) -> int:
    """How many of a cluster's training calls S5 could train on, under the spec derived from those calls."""
    spec = derive_prompt_spec(records, window.prompt_pruning, tokenizer, window.max_length)
    return sum(fits_window(record, tokenizer, spec, window.max_length) for record in records)


def _token_figures(lengths: list[int], max_length: int | None) -> dict[str, float | int]:
    ordered = sorted(lengths)
    figures: dict[str, float | int] = {
        "mean": round(statistics.fmean(ordered), 1),
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }
    if max_length is not None:
        figures["over_max_length"] = sum(length > max_length for length in ordered)
    return figures


def prompt_token_report(
    records: list[CallRecord], tokenizer: Any, spec: PromptSpec | None, max_length: int | None = None
) -> dict[str, Any]:
    """Tokens per call (prompt + answer) with the full prompt (``before``) and with the spec's (``after``), and
    how many calls exceed ``max_length`` either way: what S5 logs beside the calls it leaves out."""
    if not records:
        return {"calls": 0, "max_length": max_length, "before": None, "after": None}
    before = [call_tokens(record, tokenizer) for record in records]
    after = [call_tokens(record, tokenizer, spec) for record in records]
    return {
        "calls": len(records),
        "max_length": max_length,
        "before": _token_figures(before, max_length),
        "after": _token_figures(after, max_length),
    }


def load_prompt_transform(folder: str | Path | None) -> Callable[[CallRecord], list[dict[str, str]]]:
    """The call -> chat messages function a model folder was trained with (the full prompt when it has no spec)."""
    return partial(build_messages, spec=load_prompt_spec(folder))
