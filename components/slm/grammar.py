"""Grammar-constrained decoding of tool calls: a small model cannot write a malformed call.

A fine-tuned 135M model mostly knows *which* call to make, yet a share of its answers fail on form: a JSON brace
too many, an argument the tool does not have, a string where the schema wants a number, a call nested in its own
arguments. Here each call that offers tools is decoded under a grammar built from those tools (llguidance): every
``<tool_call>`` body is a JSON object whose ``name`` is one of the offered tools and whose ``arguments`` follow
that tool's parameter schema (required arguments present, no others, types and enums respected, integers within
what a JSON parser keeps exactly), and an answer makes at most as many calls as the task allows (the adapter's
prompt spec). The model still chooses the tool and the values; the grammar only removes the tokens that would
break the format.

``required`` answers are calls only (a cluster whose logged answers are all calls); otherwise the model may also
answer in text, and only what it writes inside ``<tool_call>`` is constrained. llguidance is optional: without
it, generation is unconstrained (and says so once in the log).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from components.scoring.tool_calls import json_schema_form, tool_parameters

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# The separators of components/slm/'s targets (json.dumps defaults), so constrained answers read like the
# answers the model was trained on.
_JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def strict_schema(schema: Any) -> Any:
    """A tool's parameter schema in the form a grammar can enforce: JSON Schema type names, objects closed to
    extra keys, annotations (descriptions, examples) dropped, as they constrain nothing and slow compilation."""
    return json_schema_form(schema, closed=True)


def call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``: ``{"name": <tool>, "arguments": {...}}``."""
    options = []
    for name, parameters in tool_parameters(tools).items():
        arguments = strict_schema({"type": "object", **parameters})
        if arguments.get("type") != "object":  # parameters that are not an object: the tool takes none
            arguments = strict_schema({"type": "object"})
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not options:
        raise ValueError("no tool with a name to call")
    schema = {"anyOf": options} if len(options) > 1 else options[0]
    return {**schema, "x-guidance": _JSON_OPTIONS}


def tool_call_grammar(tools: list[dict[str, Any]], required: bool, max_calls: int | None = None) -> str:
    """A Lark grammar (llguidance's dialect) for answers made of ``<tool_call>...</tool_call>`` lines, at most
    ``max_calls`` of them (no limit when ``None``)."""
    schema = json.dumps(call_schema(tools), ensure_ascii=False)
    if max_calls is None:
        calls = 'calls: call ("\\n" call)*\n'
    else:  # llguidance refuses a {0,0} repetition
        calls = "calls: call\n" if max_calls <= 1 else f'calls: call ("\\n" call){{0,{max_calls - 1}}}\n'
    calls += f'call: "<tool_call>" %json {schema} "</tool_call>"\n'
    if required:
        return "start: calls\n" + calls
    # Text that does not open with a tag is left free; once the model writes "<", it is writing a call.
    return "start: calls | TEXT\nTEXT: /[^<][\\s\\S]*/\n" + calls


@lru_cache(maxsize=1)
def _warn_unconstrained() -> None:
    logger.warning("llguidance is not installed: tool calls are decoded without a grammar")


@lru_cache(maxsize=8)
def _ll_tokenizer(tokenizer: PreTrainedTokenizerBase, stop_ids: tuple[int, ...]) -> Any:
    import llguidance.hf

    # Converting the vocabulary takes about a second: once per tokenizer.
    return llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_ids))


def make_logits_processor(
    tokenizer: PreTrainedTokenizerBase,
    stop_ids: list[int],
    tools_per_row: list[list[dict[str, Any]] | None],
    required: bool,
    max_calls: int | None = None,
) -> Any | None:
    """A transformers logits processor constraining each row with tools (see :func:`tool_call_grammar`); ``None``
    when no row has tools or llguidance is missing (generation then runs unconstrained)."""
    if not any(tools_per_row):
        return None
    if not available():
        _warn_unconstrained()
        return None
    import llguidance
    import numpy as np
    import torch
    from transformers import LogitsProcessor

    ll_tokenizer = _ll_tokenizer(tokenizer, tuple(stop_ids))
    matchers = []
    for tools in tools_per_row:
        if not tools:
            matchers.append(None)
            continue
        grammar = llguidance.LLMatcher.grammar_from_lark(tool_call_grammar(tools, required, max_calls))
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():  # a schema the compiler refuses: this row is decoded without a grammar
            logger.warning("tool-call grammar refused (%s): row decoded without it", matcher.get_error()[:200])
            matcher = None
        matchers.append(matcher)
    if all(matcher is None for matcher in matchers):
        return None

    class ToolCallGrammar(LogitsProcessor):
        """Masks, per row, the tokens its grammar forbids next; rows that finished or have no grammar are left."""

        def __init__(self) -> None:
            self.prompt_length: int | None = None
            # One bit per token of llguidance's vocabulary (which may count a token more than the model's).
            self.words = len(next(m for m in matchers if m is not None).compute_bitmask()) // 4
            stop_bits = np.zeros(self.words, dtype=np.uint32)
            for token in stop_ids:
                stop_bits[token // 32] |= np.uint32(1) << np.uint32(token % 32)
            self.stop_only = stop_bits.view(np.int32)

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.prompt_length is None:
                self.prompt_length = input_ids.shape[1]
            elif input_ids.shape[1] > self.prompt_length:
                for row, matcher in enumerate(matchers):
                    if matcher is not None and not matcher.is_stopped() and not matcher.is_error():
                        matcher.consume_token(int(input_ids[row, -1]))
            bitmask = np.full((len(matchers), self.words), -1, dtype=np.int32)
            constrained = np.zeros(len(matchers), dtype=bool)
            for row, matcher in enumerate(matchers):
                if matcher is None or matcher.is_error():
                    continue
                if matcher.is_stopped():
                    # The answer is complete (its last allowed call is closed): only a stop token may follow, or
                    # the row would run on unconstrained to the token budget.
                    bitmask[row] = self.stop_only
                else:
                    bitmask[row] = np.frombuffer(matcher.compute_bitmask(), dtype=np.int32)
                constrained[row] = True
            if not constrained.any():
                return scores
            allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, : scores.shape[1]]
            if allowed.shape[1] < scores.shape[1]:  # the model's embedding is padded past the vocabulary
                allowed = np.pad(allowed, ((0, 0), (0, scores.shape[1] - allowed.shape[1])))
            forbidden = torch.from_numpy(allowed == 0).to(scores.device)
            forbidden[torch.from_numpy(~constrained).to(scores.device)] = False
            return scores.masked_fill(forbidden, float("-inf"))

    return ToolCallGrammar()


def tool_matcher(
    tokenizer: PreTrainedTokenizerBase,
    stop_ids: list[int],
    tools: list[dict[str, Any]] | None,
    required: bool,
    max_calls: int | None = None,
) -> Any | None:
    """One answer's llguidance matcher of its tools' grammar (:func:`tool_call_grammar`), for the engines that mask
    one row at a time; ``None`` without tools, without llguidance or for a grammar the compiler refuses."""
    if not tools:
        return None
    if not available():
        _warn_unconstrained()
        return None
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_lark(tool_call_grammar(tools, required, max_calls))
    matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, tuple(stop_ids)), grammar, log_level=0)
    if matcher.is_error():
        logger.warning("tool-call grammar refused (%s): answer decoded without it", matcher.get_error()[:200])
        return None
    return matcher


def allowed_tokens(matcher: Any, vocab_size: int, stop_ids: list[int]) -> Any:
    """The tokens ``matcher`` lets come next, as a boolean array over the model's ``vocab_size`` logits: only a stop
    token once the answer is complete (else a finished row runs on, unconstrained, to the token budget)."""
    import numpy as np

    allowed = np.zeros(vocab_size, dtype=bool)
    if matcher.is_stopped():
        allowed[stop_ids] = True
        return allowed
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    allowed[: min(len(bits), vocab_size)] = bits[:vocab_size].astype(bool)
    return allowed
