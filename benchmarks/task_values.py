"""S2 keeps the task: the share of request-stated argument values that the anonymized prompt still states, next to
recall on injected PII, on real BFCL live calls and on the demo's multi-turn agent log.

    PYTHONPATH=. python benchmarks/task_values.py [--live 300] [--conversations 60] [--examples 15]

A *request-stated* value is a string (or number) argument of the LLM's call, two characters or more, that occurs
verbatim, as a whole word or phrase, in the conversation before the call (user, assistant and tool messages; not the system prompt). After S2
it is *kept* when the anonymized call's value at the same place occurs verbatim in the anonymized conversation:
either untouched in both, or replaced by the same surrogate in both. A value that is not kept is a label the SLM
cannot derive from its prompt. Recall is the pipeline's detection recall on the labelled PII set of
benchmarks/anonymization_quality.py (every character of an injected value covered by a detected span).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.anonymization_data import build_labelled_set  # noqa: E402
from benchmarks.anonymization_quality import score  # noqa: E402
from components.collect.config import CollectConfig  # noqa: E402
from components.collect.demo_data import DemoDataConfig, build_demo_calls  # noqa: E402
from components.collect.sources.common import RecordError  # noqa: E402
from components.collect.sources.openai_jsonl import parse_object  # noqa: E402
from components.core.config import load_params  # noqa: E402
from components.core.schema import CallRecord  # noqa: E402
from components.curate.anonymize import AnonymizeConfig, Anonymizer, anonymize_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIVE_CATEGORIES = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]


def leaves(value: Any, path: tuple = ()) -> list[tuple[tuple, str]]:
    """(path, text) of every string or number in a call's arguments."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in leaves(item, (*path, index))]
    if isinstance(value, bool) or value is None:
        return []
    return [(path, value if isinstance(value, str) else json.dumps(value))]


def conversation_text(record: CallRecord) -> str:
    return "\n".join(
        [m.content or "" for m in record.messages if m.role not in ("system", "developer")]
        + [call.arguments for m in record.messages for call in m.tool_calls]
    )


def call_leaves(record: CallRecord) -> list[tuple[int, tuple, str]]:
    found = []
    for index, call in enumerate(record.response.tool_calls):
        try:
            arguments = call.parsed_arguments()
        except ValueError:
            continue
        found += [(index, path, text) for path, text in leaves(arguments)]
    return found


def states(prompt: str, value: str) -> bool:
    """The value occurs in the prompt as a whole (not inside a longer word: "en" is not stated by "English")."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", prompt) is not None


def kept_share(raw: list[CallRecord], clean: list[CallRecord], examples: int) -> dict[str, Any]:
    stated = kept = 0
    misses = []
    for before, after in zip(raw, clean):
        prompt_before, prompt_after = conversation_text(before), conversation_text(after)
        after_leaves = {(index, path): text for index, path, text in call_leaves(after)}
        for index, path, text in call_leaves(before):
            if len(text.strip()) < 2 or not states(prompt_before, text):
                continue
            stated += 1
            new = after_leaves.get((index, path))
            if new is not None and states(prompt_after, new):
                kept += 1
            elif len(misses) < examples:
                misses.append({"value": text, "became": new, "argument": ".".join(map(str, path))})
    return {"stated": stated, "kept": kept, "share": kept / stated if stated else float("nan"), "misses": misses}


def records_of(lines: list[str]) -> list[CallRecord]:
    records = []
    for line in lines:
        try:
            records += [r for r in parse_object(json.loads(line), CollectConfig()) if isinstance(r, CallRecord)]
        except (RecordError, ValueError):
            continue  # the demo's malformed lines
    return records


def pii_recall(anonymizer: Anonymizer, texts: int, seed: int) -> dict[str, float]:
    labelled = build_labelled_set(texts, seed)
    spans = anonymizer.analyze_texts(item.text for item in labelled)
    detected = [[(s.start, s.end, s.entity_type) for s in spans[item.text]] for item in labelled]
    table = score(labelled, detected)
    gold = sum(row["gold"] for row in table.values())
    found = sum(row["recall"] * row["gold"] for row in table.values() if row["gold"])
    return {"overall": found / gold, **{entity: row["recall"] for entity, row in table.items() if row["gold"]}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--live", type=int, default=300, help="BFCL live calls")
    parser.add_argument("--conversations", type=int, default=60, help="demo agent conversations")
    parser.add_argument("--recall-texts", type=int, default=400)
    parser.add_argument("--examples", type=int, default=15, help="misses to print per log")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    cfg = AnonymizeConfig(**{**params["anonymize"], "input": "-", "output": "-", "audit": "-"})
    anonymizer = Anonymizer(cfg)
    logs = {
        "BFCL live": DemoDataConfig(
            kind="bfcl", categories=LIVE_CATEGORIES, max_records=args.live, pii_share=0.0, malformed_lines=0
        ),
        "demo agent (multi-turn)": DemoDataConfig(
            kind="agent", conversations=args.conversations, pii_share=0.0, malformed_lines=0
        ),
    }
    rows = []
    for name, log_cfg in logs.items():
        raw = records_of(build_demo_calls(log_cfg))
        started = time.perf_counter()
        clean, _ = anonymize_records(raw, cfg, anonymizer=anonymizer)
        result = kept_share(raw, clean, args.examples)
        rows.append((name, len(raw), result, time.perf_counter() - started))
        for miss in result["misses"]:
            print(f"  {name}: {miss['argument']} = {miss['value']!r} -> {miss['became']!r}")
    recall = pii_recall(anonymizer, args.recall_texts, seed=7)
    print(f"\n{'log':<26}{'calls':>7}{'stated':>8}{'kept':>7}{'kept share':>12}{'seconds':>9}")
    for name, calls, result, seconds in rows:
        print(f"{name:<26}{calls:>7}{result['stated']:>8}{result['kept']:>7}{result['share']:>12.3f}{seconds:>9.1f}")
    print(f"\nPII recall on {args.recall_texts} labelled texts (seed 7): {recall['overall']:.3f}")
    print("  " + ", ".join(f"{entity} {value:.3f}" for entity, value in recall.items() if entity != "overall"))


if __name__ == "__main__":
    main()
