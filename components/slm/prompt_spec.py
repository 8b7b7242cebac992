"""The prompt spec: what a cluster's compact prompt keeps (components/slm/prompt_pruning.py derives it from the
training calls), written as ``prompt_spec.json`` beside the adapter so that training, evaluation and serving build
one prompt (components/slm/prompt.py :func:`build_messages`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from components.core.schema import CallRecord, ChatMessage
from components.slm.context_window import window_messages
from components.slm.tool_signatures import (
    _description,
    distinct_descriptions,
    first_sentence,
    tool_name,
    tool_signature,
)

PROMPT_SPEC_FILE = "prompt_spec.json"
ToolListing = Literal["signatures", "bare_signatures", "names", "dropped"]
TOOL_NAMES_PREFIX = "Tools: "


class PromptSpec(BaseModel):
    """What the compact prompt keeps, and how the model answers; ``None`` in place of a spec means the full prompt
    and nothing known about the answers (a base model's)."""

    version: int = 2
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
    # The context window (version 2; ``None``: the whole conversation, as version 1 specs were trained).
    history_turns: int | None = None
    max_tool_result_chars: int | None = None
    # Turns before the window as one line of the values they introduced (issue 30); False: dropped, as before.
    digest_older_turns: bool = False
    untyped_strings: bool = False  # string parameters listed by name alone (issue 30)
    # Which recipe the window fitting kept: 0 the configured one, n the n-th of prompt_pruning.FITTING_STEPS.
    fitting_step: int = 0
    max_digest_chars: int | None = None
    # Tools the training calls were offered (a call offering another is refused), and those their answers call
    # (the only known ones listed); ``None``: every offered tool is listed and none is refused for its tools.
    known_tools: list[str] | None = None
    called_tools: list[str] | None = None
    drop_shared_description_openings: bool = False
    max_tool_description_chars: int | None = None

    def listed_tools(self, record: CallRecord) -> list[dict[str, Any]]:
        """The offered tools the prompt lists: all but those the training calls were offered and never called."""
        if self.known_tools is None or self.called_tools is None:
            return list(record.tools)
        hidden = set(self.known_tools) - set(self.called_tools)
        return [tool for tool in record.tools if tool_name(tool) not in hidden]

    def conversation(self, record: CallRecord) -> list[ChatMessage]:
        """The messages of the call the prompt keeps (system messages left out): its context window."""
        return window_messages(
            record.messages,
            self.history_turns,
            self.max_tool_result_chars,
            self.digest_older_turns,
            self.max_digest_chars,
        )

    def system_content(self, record: CallRecord) -> str:
        """The system message of the compact prompt: the kept system prompt and the tool listing, no more."""
        parts = [] if self.drop_system_prompt else [record.system_prompt.strip()]
        if record.tools and self.tools == "names":
            parts.append(TOOL_NAMES_PREFIX + ", ".join(tool_name(tool) for tool in self.listed_tools(record)))
        elif record.tools and self.tools != "dropped":
            with_description = self.tools == "signatures"
            distinct = distinct_descriptions(record.tools) if self.drop_shared_description_openings else {}
            listing = []
            for tool in self.listed_tools(record):
                description = distinct.get(tool_name(tool), _description(tool))
                short = first_sentence(description, self.max_tool_description_chars)
                listing.append(tool_signature(tool, with_description, short, self.untyped_strings))
            parts.append("\n".join(listing))
        return "\n".join(part for part in parts if part)


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
