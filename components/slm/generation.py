"""Batched greedy generation, decoded under the tool grammar, with answer and call budgets derived from the task.

Shared by S4 (select), S5 (finetune) and S6 (evaluate) and the router, so every step answers a call the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.core.schema import CallRecord
from components.slm.confidence import answer_confidence
from components.slm.loading import PROMPT_SPEC_ATTRIBUTE, load_model
from components.slm.prompt import render_prompt

# What S4, S6 and the embedded server generate with (components/slm loads onto the CPU): the engine every SLM latency,
# and so every SLM cost, of a run is measured on.
GENERATION_ENGINE = "transformers-eager"

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ProgressCallback = Callable[[int, int], None]  # (records done, records in all)


@dataclass
class Generation:
    text: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    # How sure the model was (components/slm/confidence.py), from its token log-probabilities; None where the
    # engine gives none.
    confidence: dict[str, float] | None = None
    # Each generated token's text and log-probability (the stop token left out), for an OpenAI ``logprobs`` answer;
    # None where the engine gives none.
    token_logprobs: list[tuple[str, float]] | None = None


def answer_token_budget(
    answer_lengths: list[int], cap: int | None = None, margin: float = 1.5, slack: int = 16
) -> int | None:
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


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS, plus the end-of-turn token (ChatML's, Gemma's) when the template uses it (some tokenizers name
    another EOS)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for end_of_turn in ("<|im_end|>", "<end_of_turn>"):
        if end_of_turn in (tokenizer.chat_template or ""):
            ids.add(tokenizer.convert_tokens_to_ids(end_of_turn))
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


class TokenLogprobs:
    """A logits processor, last in the list, that keeps each row's log-probability of the token greedy decoding
    picks at each step (the largest of the scores the grammar left, renormalised over the allowed tokens); it
    changes no score. ``steps[t][row]``."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def __call__(self, input_ids, scores):  # noqa: ANN001, ANN204  (transformers' processor protocol)
        import torch

        logprobs = torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values
        self.steps.append(torch.nan_to_num(logprobs, nan=0.0).tolist())
        return scores

    def row(self, row: int, count: int) -> list[float]:
        return [step[row] for step in self.steps[:count]]


def token_offsets(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> list[int]:
    """Where each token's characters begin in the decode of ``tokens`` (one more entry: the decode's length)."""
    return [len(tokenizer.decode(tokens[:end], skip_special_tokens=True)) for end in range(len(tokens) + 1)]


def tokens_confidence(
    tokenizer: PreTrainedTokenizerBase, tokens: list[int], logprobs: list[float]
) -> dict[str, float] | None:
    """An answer's confidence features (components/slm/confidence.py) from its tokens and their log-probabilities."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return answer_confidence(text, token_offsets(tokenizer, tokens), logprobs)


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
    (components/slm/grammar.py), with at most ``max_tool_calls`` calls (default: the spec's budget);
    ``require_tool_calls`` (default: what the spec says the model answers) allows calls only. Each answer carries
    its confidence features (:func:`tokens_confidence`), from the log-probabilities the decode gave its tokens.
    """
    import torch
    from transformers import LogitsProcessorList

    from components.slm.grammar import make_logits_processor

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
        batch_indices = order[start : start + batch_size]
        # The chat template already wrote the special tokens.
        inputs = tokenizer(
            [prompts[i] for i in batch_indices], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        began = time.perf_counter()
        grammar = (
            None
            if not constrain_tool_calls
            else make_logits_processor(
                tokenizer, stop_ids, [records[i].tools for i in batch_indices], require_tool_calls, max_tool_calls
            )
        )
        recorder = TokenLogprobs()
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList(([grammar] if grammar else []) + [recorder]),
            )
        latency_ms = (time.perf_counter() - began) * 1000 / len(batch_indices)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        for row, index in enumerate(batch_indices):
            tokens = new_tokens[row]
            end = next((position + 1 for position, token in enumerate(tokens) if token in stop_ids), len(tokens))
            decoded = tokenizer.decode(tokens[:end], skip_special_tokens=True)
            offsets = token_offsets(tokenizer, tokens[:end])
            logprobs = recorder.row(row, end)
            results[index] = Generation(
                text=decoded.strip(),
                latency_ms=latency_ms,
                prompt_tokens=int(prompt_lengths[row]),
                completion_tokens=end,
                confidence=answer_confidence(decoded, offsets, logprobs),
                token_logprobs=[
                    (decoded[offsets[i] : offsets[i + 1]], logprobs[i])
                    for i in range(len(logprobs))
                    if tokens[i] not in stop_ids
                ],
            )
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return [result for result in results if result is not None]


def generate_answers(
    reference: str,
    records: list[CallRecord],
    max_new_tokens: int,
    batch_size: int,
    progress: ProgressCallback | None = None,
    adapter_dir: str | None = None,
    loaded: tuple | None = None,
    constrain_tool_calls: bool = True,
    with_confidence: bool = False,
) -> list[tuple]:
    """Answer the records with a model (optionally with an adapter): [(completion, latency ms)], or with
    ``with_confidence`` [(completion, latency ms, confidence features)] (:attr:`Generation.confidence`).
    ``loaded`` is a (model, tokenizer) pair already in memory; without it the model is loaded here."""
    model, tokenizer = loaded or load_model(reference, adapter_dir=adapter_dir)
    generations = generate(
        model,
        tokenizer,
        records,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        constrain_tool_calls=constrain_tool_calls,
    )
    if with_confidence:
        return [(g.text, g.latency_ms, g.confidence) for g in generations]
    return [(g.text, g.latency_ms) for g in generations]
