"""Small language models for S4-S6 and serving: loading, the prompt/target contract, batched generation under the
tool grammar, prompt pruning, the candidate catalog, and the engines that serve adapters (the transformers pool,
llama.cpp). Imports core and scoring.tool_calls, never a step package."""

from components.slm.catalog import CatalogEntry, install_chat_template, load_catalog
from components.slm.generation import Generation, answer_token_budget, generate, generate_answers, tool_call_budget
from components.slm.loading import PROMPT_SPEC_ATTRIBUTE, count_parameters, load_model, prepare_model
from components.slm.prompt import (
    TOOL_RESULT_PREFIX,
    build_messages,
    parse_completion,
    render_prompt,
    render_target,
    tool_signature,
)

__all__ = [
    "PROMPT_SPEC_ATTRIBUTE",
    "TOOL_RESULT_PREFIX",
    "CatalogEntry",
    "Generation",
    "answer_token_budget",
    "build_messages",
    "count_parameters",
    "generate",
    "generate_answers",
    "install_chat_template",
    "load_catalog",
    "load_model",
    "parse_completion",
    "prepare_model",
    "render_prompt",
    "render_target",
    "tool_call_budget",
    "tool_signature",
]
