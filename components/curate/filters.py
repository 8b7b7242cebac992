"""Curation beyond PII: drop the records that would teach the small model nothing, or the wrong thing.

Per-record checks run first (empty or refused answers, cut-off or schema-breaking tool calls, prompts out of
bounds); deduplication then runs over the survivors, so "keep the first" keeps the first *usable* copy. Nothing
is dropped silently: every removed record is listed with its reason and a detail that names ids, argument
names and schema rules but never a value from the texts, because the report is written before anyone has
checked that the anonymizer caught everything. Framework-free.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from components.core.config import StepConfig
from components.core.schema import CallRecord, ChatMessage, ToolCall

try:  # MinHash LSH keeps near-duplicate search linear; the exact pairwise fallback is quadratic.
    from datasketch import MinHash, MinHashLSH

    HAVE_DATASKETCH = True
except ImportError:  # pragma: no cover - exercised by forcing the flag in the tests
    HAVE_DATASKETCH = False

SHINGLE_WORDS = 5
MINHASH_PERMUTATIONS = 128
# LSH is probabilistic: it looks for candidates below the threshold so that true matches near it are not missed,
# and every candidate is then confirmed with its exact Jaccard similarity.
LSH_THRESHOLD_MARGIN = 0.15
# A refusal opens the answer; the same words deep in a long, useful answer are usually quoted or incidental.
REFUSAL_WINDOW_CHARS = 300
REFUSAL_PATTERN = re.compile(
    r"\b(?:"
    r"i'?m sorry,? but i (?:can'?t|cannot|am unable|am not able|won'?t)"
    r"|i apologi[sz]e,? but i (?:can'?t|cannot|am unable|am not able|won'?t)"
    r"|sorry,? (?:but )?i (?:can'?t|cannot) (?:help|assist|do that|comply)"
    r"|i (?:can'?t|cannot|am unable to|am not able to|won'?t be able to) (?:help|assist|comply|fulfill|provide"
    r" (?:that|this|help|assistance))"
    r"|as an ai\b"
    r"|i (?:must|have to) decline"
    r")",
    re.IGNORECASE,
)

REASONS = (
    "empty_response",
    "too_short",
    "too_long",
    "response_too_long",
    "wrong_language",
    "refusal",
    "truncated",
    "invalid_tool_call",
    "exact_duplicate",
    "near_duplicate",
)


class CurateConfig(StepConfig):
    dedupe_exact: bool = True
    # Jaccard similarity over word 5-shingles at or above which a record is a near-duplicate; None disables.
    # With 5-shingles a one-word change alters up to 5 shingles, so 0.9 only matches texts of ~100+ words.
    near_duplicate_threshold: float | None = Field(default=0.9, gt=0.0, le=1.0)
    min_prompt_chars: int = Field(default=1, ge=0)
    max_prompt_chars: int = Field(default=50_000, ge=1)
    max_response_chars: int | None = Field(default=20_000, ge=1)  # text plus tool-call arguments; None: no limit
    # ISO 639-1 codes the user requests must be in (py3langid); None keeps every language. A record is dropped
    # only when the detector is sure (language_min_confidence) on a request long enough to judge.
    languages: list[str] | None = ["en"]
    language_min_confidence: float = Field(default=0.9, ge=0.0, le=1.0)
    language_min_chars: int = Field(default=20, ge=1)
    drop_refusals: bool = True
    drop_truncated: bool = True
    validate_tool_calls: bool = True
    # Calls the S6 router answered with an SLM carry metadata.route.route == "slm": their response is not the
    # LLM's, so training on them would teach the SLM its own mistakes. Shadow/fallback calls keep the LLM's answer.
    drop_slm_answers: bool = True


@dataclass
class CurationResult:
    kept: list[CallRecord]
    removed: list[dict[str, str]] = field(default_factory=list)  # {"record_id", "reason", "detail"}, no raw text
    counts: dict[str, int] = field(default_factory=dict)  # reason -> number of removed records


# ---------------------------------------------------------------------------------------------- rendering


def _normalize(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split())


def _render_call(call: ToolCall) -> str:
    try:  # key order and spacing are not content
        arguments = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True, ensure_ascii=False)
    except json.JSONDecodeError:
        arguments = call.arguments
    return f"{call.name} {arguments}"


def _render_message(message: ChatMessage) -> str:
    return " ".join([message.content or "", *(_render_call(call) for call in message.tool_calls)])


def prompt_chars(record: CallRecord) -> int:
    """Characters the model reads: every message's text and tool-call arguments, plus the tool schemas."""
    messages = sum(len(m.content or "") + sum(len(c.arguments) for c in m.tool_calls) for m in record.messages)
    return messages + (len(json.dumps(record.tools)) if record.tools else 0)


def _context_key(record: CallRecord) -> str:
    """What only identical records share: the agent (system prompt, offered tools) and the response's shape.

    Shingles are compared only within one context: a long shared system prompt would otherwise make two
    different tasks of the same agent look alike, and a call to another function is never a duplicate.
    """
    shape = [record.output_kind, *(call.name for call in record.response.tool_calls)]
    key = json.dumps([_normalize(record.system_prompt), sorted(record.tool_names), shape])
    return hashlib.sha256(key.encode()).hexdigest()


def _content_text(record: CallRecord) -> str:
    """The conversation after the system prompt (tool results included, so agent steps differ) and the answer."""
    turns = [f"{m.role}: {_render_message(m)}" for m in record.messages if m.role not in ("system", "developer")]
    return _normalize(" ".join([*turns, "assistant:", _render_message(record.response)]))


def _shingles(text: str) -> set[str]:
    words = re.findall(r"\w+", text)
    if len(words) <= SHINGLE_WORDS:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ------------------------------------------------------------------------------------ per-record checks


def _is_cut_off_json(text: str) -> bool:
    """True when the text is JSON that ends early: the parser ran out of input rather than met a wrong char."""
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return error.msg.startswith("Unterminated string") or error.pos >= len(text.rstrip())
    return False


def _tool_schemas(record: CallRecord) -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for tool in record.tools:
        function = tool.get("function", {})
        if function.get("name"):
            schemas[function["name"]] = function.get("parameters") or {}
    return schemas


def argument_path_shape(path: Any) -> str:
    """Where in the arguments a problem is, by shape only: ``arguments.<key>.<key>[<i>]``. Keys of the arguments
    can be data (``{"cards": {"Alex": ...}}``) and the audit goes to MLflow, so no key or value is quoted."""
    return "arguments" + "".join("[<i>]" if isinstance(part, int) else ".<key>" for part in path)


def _schema_problems(arguments: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Schema violations described by argument path and rule only: jsonschema's own messages quote the value."""
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError:
        return []  # a broken tool schema is the agent's problem, not this record's: nothing to check against
    problems = []
    for error in sorted(validator_class(schema).iter_errors(arguments), key=lambda e: list(e.absolute_path)):
        where = argument_path_shape(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            # The names come from the tool's schema, not from the record.
            missing = [name for name in error.validator_value if name not in error.instance]
            problems.append(f"missing required argument(s) {missing} at {where}")
        elif error.validator == "type":
            problems.append(f"'{where}' is not of type {error.validator_value!r}")
        elif error.validator == "additionalProperties":
            problems.append(f"unexpected argument(s) at {where}")
        else:
            problems.append(f"'{where}' violates '{error.validator}'")
    return problems


def _tool_call_problem(record: CallRecord, cfg: CurateConfig) -> tuple[str, str] | None:
    """(reason, detail) for the first bad tool call of the response, or None."""
    schemas = _tool_schemas(record)
    for index, call in enumerate(record.response.tool_calls, start=1):
        label = f"call {index} ({call.name})"
        try:
            arguments = call.parsed_arguments()
        except json.JSONDecodeError:
            if cfg.drop_truncated and _is_cut_off_json(call.arguments or "{}"):
                return "truncated", f"{label}: arguments JSON ends early"
            if cfg.validate_tool_calls:
                return "invalid_tool_call", f"{label}: arguments are not valid JSON"
            continue
        except ValueError:
            if cfg.validate_tool_calls:
                return "invalid_tool_call", f"{label}: arguments are not a JSON object"
            continue
        if not cfg.validate_tool_calls or not schemas:
            continue  # without offered tools there is no name or schema to check against
        if call.name not in schemas:
            return "invalid_tool_call", f"{label}: function is not among the offered tools"
        problems = _schema_problems(arguments, schemas[call.name])
        if problems:
            return "invalid_tool_call", f"{label}: " + "; ".join(problems[:3])
    return None


def response_chars(record: CallRecord) -> int:
    response = record.response
    return len(response.content or "") + sum(len(call.name) + len(call.arguments) for call in response.tool_calls)


_LANGUAGE_IDENTIFIER: Any = None


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's model, loaded once per process."""
    global _LANGUAGE_IDENTIFIER
    if _LANGUAGE_IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LANGUAGE_IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    language, probability = _LANGUAGE_IDENTIFIER.classify(text)
    return str(language), float(probability)


def _language_problem(record: CallRecord, cfg: CurateConfig) -> tuple[str, str] | None:
    request = record.user_request.strip()
    if cfg.languages is None or len(request) < cfg.language_min_chars:
        return None
    language, probability = detect_language(request)
    if language not in cfg.languages and probability >= cfg.language_min_confidence:
        return "wrong_language", f"request detected as '{language}' (p={probability:.2f}), allowed {cfg.languages}"
    return None


def _record_problem(record: CallRecord, cfg: CurateConfig) -> tuple[str, str] | None:
    response = record.response
    route = (record.metadata or {}).get("route") or {}
    # An audited call's response is the LLM's (components/serve/audit.py): it is kept, and trains like any other.
    audited = (record.metadata or {}).get("origin") == "audited" and route.get("audit") in ("match", "miss")
    if cfg.drop_slm_answers and route.get("route") == "slm" and not audited:
        return "slm_answer", f"answered by the SLM of cluster {route.get('cluster_id')}, not by the LLM"
    if not response.tool_calls and not (response.content or "").strip():
        return "empty_response", "no text and no tool call"
    size = prompt_chars(record)
    if size < cfg.min_prompt_chars:
        return "too_short", f"prompt has {size} chars < min_prompt_chars {cfg.min_prompt_chars}"
    if size > cfg.max_prompt_chars:
        return "too_long", f"prompt has {size} chars > max_prompt_chars {cfg.max_prompt_chars}"
    if cfg.max_response_chars is not None and response_chars(record) > cfg.max_response_chars:
        return "response_too_long", f"response has {response_chars(record)} chars > {cfg.max_response_chars}"
    wrong_language = _language_problem(record, cfg)
    if wrong_language:
        return wrong_language
    if cfg.drop_refusals and not response.tool_calls:
        opening = (response.content or "")[:REFUSAL_WINDOW_CHARS].replace("\u2019", "'")
        if REFUSAL_PATTERN.search(opening):
            return "refusal", "text response opens with a refusal phrase"
    # Truncation is only detectable in tool-call arguments (JSON that ends early): the log keeps no
    # finish_reason, and a text that stops mid-sentence may well be complete.
    if response.tool_calls and (cfg.validate_tool_calls or cfg.drop_truncated):
        return _tool_call_problem(record, cfg)
    return None


# ------------------------------------------------------------------------------------------- dedupe


class _NearDuplicateIndex:
    """The kept records' shingle sets per context, searched with MinHash LSH or, without datasketch, pairwise."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._shingles: dict[str, set[str]] = {}
        self._by_context: dict[str, list[str]] = {}
        self._lsh: dict[str, Any] = {}

    def find_or_add(self, record_id: str, context: str, shingles: set[str]) -> str | None:
        """The id of the most similar kept record at or above the threshold; otherwise index this one."""
        signature = self._signature(shingles) if HAVE_DATASKETCH else None
        if signature is not None and context in self._lsh:
            candidates = self._lsh[context].query(signature)
        else:
            candidates = self._by_context.get(context, [])
        scored = [(_jaccard(shingles, self._shingles[other]), other) for other in candidates]
        matches = [(score, other) for score, other in scored if score >= self.threshold]
        if matches:
            return max(matches, key=lambda match: match[0])[1]
        self._shingles[record_id] = shingles
        self._by_context.setdefault(context, []).append(record_id)
        if signature is not None:
            if context not in self._lsh:
                lsh_threshold = max(0.05, self.threshold - LSH_THRESHOLD_MARGIN)
                self._lsh[context] = MinHashLSH(threshold=lsh_threshold, num_perm=MINHASH_PERMUTATIONS)
            self._lsh[context].insert(record_id, signature)
        return None

    @staticmethod
    def _signature(shingles: set[str]) -> Any:
        signature = MinHash(num_perm=MINHASH_PERMUTATIONS)
        signature.update_batch([shingle.encode() for shingle in shingles])
        return signature


def curate(records: list[CallRecord], cfg: CurateConfig) -> CurationResult:
    """The usable records in input order, and every removed one with its reason.

    ``exact_duplicate`` removes a call the agent made again (S1 already merged one call logged twice, so the
    copies that reach S2 are repeats made at other times) from the *training data* only: a second copy teaches the
    SLM nothing, and one on each side of the train/test split would score the SLM on an answer it trained on. The
    repeat stays a call in S1's records, which the run's summary counts (``calls_total``, the LLM cost): volume is
    what the conversion is sized and priced by, and the summary serves it where its kept copy lands (the router
    sees the same request); see components/evaluate/summary.py."""
    kept: list[CallRecord] = []
    removed: list[dict[str, str]] = []
    first_with_key: dict[str, str] = {}
    near_index = _NearDuplicateIndex(cfg.near_duplicate_threshold) if cfg.near_duplicate_threshold else None
    for record in records:
        problem = _record_problem(record, cfg)
        if problem is None and (cfg.dedupe_exact or near_index is not None):
            context, content = _context_key(record), _content_text(record)
            exact_key = hashlib.sha256(f"{context}\n{content}".encode()).hexdigest()
            if cfg.dedupe_exact and exact_key in first_with_key:
                problem = ("exact_duplicate", first_with_key[exact_key])
            elif near_index is not None:
                similar = near_index.find_or_add(record.record_id, context, _shingles(content))
                problem = ("near_duplicate", similar) if similar else None
            if problem is None:  # only a kept record may be named as the one a later copy duplicates
                first_with_key[exact_key] = record.record_id
        if problem is None:
            kept.append(record)
        else:
            removed.append({"record_id": record.record_id, "reason": problem[0], "detail": problem[1]})
    counts = Counter(entry["reason"] for entry in removed)
    return CurationResult(kept=kept, removed=removed, counts={r: counts[r] for r in REASONS if counts[r]})
