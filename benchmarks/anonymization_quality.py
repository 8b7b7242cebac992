"""S2 anonymization: recall and precision per entity type on a generated labelled set, and throughput of the
pipeline's path (batched NER-only spaCy, cached, digit-gated phone matching) against plain one-by-one
``AnalyzerEngine.analyze`` (full spaCy pipeline, Presidio's own phone recognizer, same extra recognizers),
side by side on the same data in one run.

    PYTHONPATH=. python benchmarks/anonymization_quality.py [--records 400] [--seed 7]

Recall: a gold value counts as found when detected spans (of any type) cover every character of it, i.e. it
would not survive anonymization. Precision: a detected span is correct when it overlaps a gold value; the rest
(distractors such as order ids, dates, UUIDs, the word "SSN") are false positives, reported under the detected type.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.anonymization_data import LabelledText, build_labelled_set  # noqa: E402
from components.core.schema import CallRecord, ChatMessage  # noqa: E402
from components.curate.anonymize import AnonymizeConfig, Anonymizer, anonymize_records  # noqa: E402

STRUCTURED_TARGET, NER_TARGET = 0.99, 0.90
NER_TYPES = {"PERSON", "STREET_ADDRESS", "LOCATION"}


def _covered(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    covered = set()
    for s, e in spans:
        covered.update(range(max(s, start), min(e, end)))
    return len(covered) == end - start


def score(labelled: list[LabelledText], detected: list[list[tuple[int, int, str]]]) -> dict[str, dict[str, float]]:
    gold_total, gold_found, predicted, correct = Counter(), Counter(), Counter(), Counter()
    for item, spans in zip(labelled, detected):
        ranges = [(s, e) for s, e, _ in spans]
        for start, end, entity in item.spans:
            gold_total[entity] += 1
            gold_found[entity] += _covered(start, end, ranges)
        for start, end, entity in spans:
            predicted[entity] += 1
            correct[entity] += any(start < g_end and g_start < end for g_start, g_end, _ in item.spans)
    table = {}
    for entity in sorted(set(gold_total) | set(predicted)):
        table[entity] = {
            "gold": gold_total[entity],
            "recall": gold_found[entity] / gold_total[entity] if gold_total[entity] else float("nan"),
            "detected": predicted[entity],
            "precision": correct[entity] / predicted[entity] if predicted[entity] else float("nan"),
        }
    return table


def plain_presidio(cfg: AnonymizeConfig):
    """Presidio as documented: AnalyzerEngine over the whole spaCy model, its own recognizers plus ours."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from components.core.assets import resolve_model_ref
    from components.curate.recognizers import build_recognizers

    engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": resolve_model_ref(cfg.spacy_model)}],
        }
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    added, _ = build_recognizers(
        "en",
        phone_regions=cfg.phone_regions,
        deny_list={},
        secret_min_length=cfg.secret_min_length,
        secret_min_bits_per_char=cfg.secret_min_bits_per_char,
    )
    for recognizer in added:
        if recognizer.name != "DigitGatedPhoneRecognizer":  # the plain path keeps Presidio's own phone recognizer
            analyzer.registry.add_recognizer(recognizer)
    return analyzer


def _merged(results, cfg: AnonymizeConfig, text: str) -> list[tuple[int, int, str]]:
    from components.curate.anonymize import _merge_overlapping, _Span

    spans = [
        _Span(r.start, r.end, r.entity_type, r.score)
        for r in results
        if r.score >= cfg.threshold_for(r.entity_type) and text[r.start : r.end].strip().upper() != "SSN"
    ]
    return [(s.start, s.end, s.entity_type) for s in _merge_overlapping(spans)]


def print_table(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}\n{'entity type':<24}{'gold':>6}{'recall':>9}{'detected':>10}{'precision':>11}  target")
    for entity, row in table.items():
        target = "" if not row["gold"] else f"recall >= {NER_TARGET if entity in NER_TYPES else STRUCTURED_TARGET:.0%}"
        print(
            f"{entity:<24}{row['gold']:>6}{row['recall']:>9.3f}{row['detected']:>10}{row['precision']:>11.3f}  {target}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    labelled = build_labelled_set(args.records, args.seed)
    print(
        f"{len(labelled)} texts, mean {sum(len(x.text) for x in labelled) / len(labelled):.0f} characters, "
        f"{sum(len(x.spans) for x in labelled)} injected values"
    )
    cfg = AnonymizeConfig(input="-", output="-", audit="-")

    plain = plain_presidio(cfg)
    plain.analyze(text="warm up John Smith 415-555-0100", language="en")
    started = time.perf_counter()
    plain_detected = [
        _merged(
            plain.analyze(text=item.text, language="en", entities=list(cfg.entities), score_threshold=0.4),
            cfg,
            item.text,
        )
        for item in labelled
    ]
    plain_seconds = time.perf_counter() - started

    anonymizer = Anonymizer(cfg)
    anonymizer.analyze_texts(["warm up John Smith 415-555-0100"])
    records = [
        CallRecord(
            record_id=str(i),
            messages=[ChatMessage(role="user", content=item.text)],
            response=ChatMessage(role="assistant", content="Done."),
        )
        for i, item in enumerate(labelled)
    ]
    started = time.perf_counter()
    anonymized, _ = anonymize_records(records, cfg, anonymizer=anonymizer)  # the pipeline's own call
    fast_seconds = time.perf_counter() - started
    spans = anonymizer.analyze_texts(item.text for item in labelled)  # cached by the run above
    fast_detected = [[(s.start, s.end, s.entity_type) for s in spans[item.text]] for item in labelled]
    leaked = sum(
        value in record.messages[0].content for item, record in zip(labelled, anonymized) for value, _ in item.values()
    )

    print_table("Pipeline path (components.curate.anonymize.anonymize_records)", score(labelled, fast_detected))
    print_table("Plain Presidio AnalyzerEngine.analyze, one by one", score(labelled, plain_detected))
    print(f"\nInjected values still present verbatim after the pipeline's anonymization: {leaked}")
    plain_rate, fast_rate = len(labelled) / plain_seconds, len(labelled) / fast_seconds
    print(f"\n{'path':<58}{'records/s':>10}{'seconds':>9}")
    print(f"{'plain AnalyzerEngine.analyze, one by one (detect only)':<58}{plain_rate:>10.1f}{plain_seconds:>9.2f}")
    print(f"{'pipeline anonymize_records (detect + replace)':<58}{fast_rate:>10.1f}{fast_seconds:>9.2f}")
    print(f"speed-up: {fast_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    main()
