"""Per-answer metrics by output type, shared by S4 select and S6 evaluate. Framework-free on purpose.

Three output types, detected per cluster from the reference answers (:func:`detect_output_type`):

* ``tool_call``: the Berkeley Function Calling Leaderboard's AST check, plus partial credit, JSON validity and
  validity against the tool's schema (components/scoring/tool_calls.py).
* ``json``: structured answers: JSON validity, validity against a schema (given, or inferred from the reference),
  share of the reference's fields matched, and exact match.
* ``text``: exact match and token F1 (SQuAD-style), ROUGE-L, and, when an embedder or a judge is supplied,
  embedding cosine similarity and an LLM judge's score.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from components.core.schema import ChatMessage
from components.scoring.tool_calls import json_schema_form, score_tool_calls

OutputType = Literal["tool_call", "json", "text"]

PRIMARY_METRIC: dict[str, str] = {"tool_call": "full_call_match", "json": "field_match", "text": "token_f1"}
METRICS: dict[str, list[str]] = {
    "tool_call": ["function_name_accuracy", "argument_accuracy", "full_call_match", "valid_json", "schema_valid"],
    "json": ["json_valid", "schema_valid", "field_match", "exact_match"],
    "text": ["exact_match", "token_f1", "rouge_l"],
}
Embedder = Callable[[list[str]], np.ndarray]  # texts -> unit-norm row vectors
Judge = Callable[[str, str], float]  # (reference, candidate) -> score in [0, 1]


# ---- output type ------------------------------------------------------------------------------------------


def parse_json_text(text: str | None) -> tuple[bool, Any]:
    """(parsed, value) of a JSON object or array, tolerating a Markdown code fence around it."""
    stripped = (text or "").strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.DOTALL)
    stripped = fenced.group(1) if fenced else stripped
    if not stripped.startswith(("{", "[")):
        return False, None
    try:
        return True, json.loads(stripped)
    except json.JSONDecodeError:
        return False, None


def detect_output_type(responses: Iterable[ChatMessage]) -> OutputType:
    """Tool calls if at least half the answers call tools; else JSON if at least half are JSON; else text."""
    answers = list(responses)
    if not answers:
        return "text"
    if sum(bool(a.tool_calls) for a in answers) * 2 >= len(answers):
        return "tool_call"
    if sum(parse_json_text(a.content)[0] for a in answers) * 2 >= len(answers):
        return "json"
    return "text"


# ---- structured JSON --------------------------------------------------------------------------------------


def schema_of(value: Any) -> dict[str, Any]:
    """A JSON schema that the reference value satisfies: its types, and its object keys as required."""
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: schema_of(v) for k, v in value.items()}, "required": sorted(value)}
    if isinstance(value, list):
        return {"type": "array", **({"items": schema_of(value[0])} if value else {})}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, (int, float)):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    return {}


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{path}/{key}").items()}
    if isinstance(value, list) and value:
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}/{i}").items()}
    return {path: value}


def _same_leaf(predicted: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return predicted is expected
    if isinstance(expected, (int, float)) and isinstance(predicted, (int, float)):
        return float(predicted) == float(expected)
    if isinstance(expected, str) and isinstance(predicted, str):
        return " ".join(predicted.split()).casefold() == " ".join(expected.split()).casefold()
    return predicted == expected


def score_json(predicted: str | None, expected: str | None, schema: dict[str, Any] | None = None) -> dict[str, float]:
    """``json_valid``; ``schema_valid`` against ``schema`` or, without one, the reference's inferred schema;
    ``field_match``: share of the reference's leaf fields (by path) the prediction has equal (numbers by value,
    strings without case and extra spaces); ``exact_match``: the same leaves, no more and no fewer."""
    import jsonschema

    predicted_ok, predicted_value = parse_json_text(predicted)
    expected_ok, expected_value = parse_json_text(expected)
    if not predicted_ok:
        return {"json_valid": 0.0, "schema_valid": 0.0, "field_match": 0.0, "exact_match": 0.0}
    check = schema if schema is not None else (schema_of(expected_value) if expected_ok else {})
    schema_valid = jsonschema.Draft202012Validator(json_schema_form(check)).is_valid(predicted_value)
    if not expected_ok:
        return {"json_valid": 1.0, "schema_valid": float(schema_valid), "field_match": 0.0, "exact_match": 0.0}
    want, got = _leaves(expected_value), _leaves(predicted_value)
    matched = sum(1 for path, value in want.items() if path in got and _same_leaf(got[path], value))
    return {
        "json_valid": 1.0,
        "schema_valid": float(schema_valid),
        "field_match": matched / len(want),
        "exact_match": float(matched == len(want) == len(got)),
    }


# ---- free text --------------------------------------------------------------------------------------------

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (SQuAD-style, keeping articles)."""
    return " ".join(_PUNCTUATION.sub(" ", text.casefold()).split())


def rouge_l(predicted: str, expected: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), via Google's rouge-score."""
    from rouge_score import rouge_scorer

    if not predicted.strip() or not expected.strip():
        return 1.0 if predicted.strip() == expected.strip() else 0.0
    return float(rouge_scorer.RougeScorer(["rougeL"]).score(expected, predicted)["rougeL"].fmeasure)


def score_text(predicted: str, expected: str) -> dict[str, float]:
    """``exact_match`` of the normalized texts; ``token_f1`` of their token multisets (1.0 when both are empty);
    ``rouge_l``."""
    predicted_tokens, expected_tokens = normalize_text(predicted).split(), normalize_text(expected).split()
    if not predicted_tokens or not expected_tokens:
        f1 = 1.0 if predicted_tokens == expected_tokens else 0.0
    else:
        common = sum((Counter(predicted_tokens) & Counter(expected_tokens)).values())
        precision, recall = common / len(predicted_tokens), common / len(expected_tokens)
        f1 = 0.0 if common == 0 else 2 * precision * recall / (precision + recall)
    return {
        "exact_match": 1.0 if predicted_tokens == expected_tokens else 0.0,
        "token_f1": f1,
        "rouge_l": rouge_l(predicted, expected),
    }


def embedding_similarity(predicted: list[str], expected: list[str], embed: Embedder) -> list[float]:
    """Cosine similarity of each pair's sentence embeddings, clipped to [0, 1]."""
    if not predicted:
        return []
    vectors = np.asarray(embed([*predicted, *expected]), dtype=float)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    left, right = vectors[: len(predicted)], vectors[len(predicted) :]
    return [float(np.clip(value, 0.0, 1.0)) for value in (left * right).sum(axis=1)]


# ---- averaging over a set of answers ----------------------------------------------------------------------


def _metric_names(output_kind: str, embed: Embedder | None, judge: Judge | None) -> list[str]:
    if output_kind not in METRICS:
        raise ValueError(f"unknown output kind '{output_kind}'; known: {', '.join(METRICS)}")
    names = list(METRICS[output_kind])
    if output_kind == "text":
        names += (["embedding_similarity"] if embed else []) + (["judge_score"] if judge else [])
    return names


def score_each(
    expected: list[ChatMessage],
    predicted: list[ChatMessage],
    output_kind: str,
    tools: list[list[dict[str, Any]]] | None = None,
    embed: Embedder | None = None,
    judge: Judge | None = None,
) -> list[dict[str, float]]:
    """The per-answer scores of one output type (see METRICS), one dict per pair, plus ``embedding_similarity``
    and ``judge_score`` for text when an embedder or a judge is given.
    ``tools``: the tools each call offered (same order), for schema checks of tool calls."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected answers but {len(predicted)} predicted")
    _metric_names(output_kind, embed, judge)
    if not expected:
        return []
    offered = tools if tools is not None else [None] * len(expected)
    if output_kind == "tool_call":
        return [score_tool_calls(p.tool_calls, e.tool_calls, t) for e, p, t in zip(expected, predicted, offered)]
    if output_kind == "json":
        return [score_json(p.content, e.content) for e, p in zip(expected, predicted)]
    texts = [(p.content or "", e.content or "") for e, p in zip(expected, predicted)]
    per_pair = [score_text(p, e) for p, e in texts]
    if embed:
        for scores, value in zip(per_pair, embedding_similarity([p for p, _ in texts], [e for _, e in texts], embed)):
            scores["embedding_similarity"] = value
    if judge:
        for scores, (p, e) in zip(per_pair, texts):
            scores["judge_score"] = judge(e, p)
    return per_pair


def score_pairs(
    expected: list[ChatMessage],
    predicted: list[ChatMessage],
    output_kind: str,
    tools: list[list[dict[str, Any]]] | None = None,
    embed: Embedder | None = None,
    judge: Judge | None = None,
) -> dict[str, float]:
    """Mean of the per-answer scores (:func:`score_each`); all 0.0 when there are no pairs."""
    per_pair = score_each(expected, predicted, output_kind, tools, embed, judge)
    return mean_scores(per_pair, output_kind, embed, judge)


def mean_scores(
    per_pair: list[dict[str, float]], output_kind: str, embed: Embedder | None = None, judge: Judge | None = None
) -> dict[str, float]:
    """Mean of per-answer scores (:func:`score_each`'s output) per metric; all 0.0 when there are no pairs."""
    names = _metric_names(output_kind, embed, judge)
    if not per_pair:
        return {metric: 0.0 for metric in names}
    return {metric: float(np.mean([scores[metric] for scores in per_pair])) for metric in names}
