"""S2's audit: what curation removed and what anonymization replaced, as counts, and a few examples shown only in
their anonymized form. It goes to MLflow and DVC, so it must never carry an original value: it is built from
counts, entity types, record ids and the already-anonymized records. Framework-free."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from components.core.schema import CallRecord

EXAMPLE_CHARS = 400


def _example(record: CallRecord, counts: Counter[str]) -> dict[str, Any]:
    response = record.response
    answer = (
        " ".join(f"{call.name}({call.arguments})" for call in response.tool_calls)
        if response.tool_calls
        else response.content or ""
    )
    return {
        "record_id": record.record_id,
        "entities": dict(sorted(counts.items())),
        "request": record.user_request[:EXAMPLE_CHARS],
        "response": answer[:EXAMPLE_CHARS],
    }


def build_audit(
    records_in: list[CallRecord], anonymized: list[CallRecord], per_record: list[Counter[str]], cfg: Any, seconds: float
) -> dict[str, Any]:
    """Counts per entity type (occurrences and records), settings, speed, and examples from the anonymized set."""
    occurrences: Counter[str] = Counter()
    records_per_entity: Counter[str] = Counter()
    for counts in per_record:
        occurrences.update(counts)
        records_per_entity.update(set(counts))
    examples = [_example(record, counts) for record, counts in zip(anonymized, per_record) if counts]
    return {
        "records_in": len(records_in),
        "records_out": len(anonymized),
        "records_with_pii": sum(1 for counts in per_record if counts),
        "entities": dict(sorted(occurrences.items())),
        "records_per_entity": dict(sorted(records_per_entity.items())),
        "entities_config": list(cfg.entities),
        "score_threshold": cfg.score_threshold,
        "entity_thresholds": dict(cfg.entity_thresholds),
        "pseudonyms": {
            "scope": cfg.pseudonyms.scope,
            "style": cfg.pseudonyms.style,
            "style_per_entity": dict(cfg.pseudonyms.style_per_entity),
            "reverse_map_kept": cfg.pseudonyms.reverse_map is not None,
        },
        "seconds": round(seconds, 3),
        "records_per_second": round(len(records_in) / seconds, 2) if seconds > 0 else None,
        "examples": examples[: cfg.audit_examples],
    }


# Removal reasons whose detail names the record a removed one repeats: by its keyed id, as S2's output names it.
_DETAIL_IS_A_RECORD_ID = frozenset({"exact_duplicate", "near_duplicate"})


def keyed_removals(removed: list[dict[str, str]], keyed_id: Callable[[str, str], str]) -> list[dict[str, str]]:
    """Curation's removals as the audit lists them: ids as the keyed ids S2 writes (a logged id may hold an email)."""
    return [
        {
            **entry,
            "record_id": keyed_id("call", entry["record_id"]),
            "detail": keyed_id("call", entry["detail"])
            if entry["reason"] in _DETAIL_IS_A_RECORD_ID
            else entry["detail"],
        }
        for entry in removed
    ]


def merge_audits(audits: list[dict[str, Any]], seconds: float, max_examples: int) -> dict[str, Any]:
    """One audit from the audits of partitions anonymized apart (pseudonyms are per record, so they add up): counts
    summed, examples in partition order up to ``max_examples``, speed over the whole wall time ``seconds``."""
    audit = dict(audits[0])  # the settings are the same in every partition
    for key in ("records_in", "records_out", "records_with_pii"):
        audit[key] = sum(a[key] for a in audits)
    for key in ("entities", "records_per_entity", "side_fields"):
        if any(key in a for a in audits):
            audit[key] = dict(sorted(sum((Counter(a.get(key, {})) for a in audits), Counter()).items()))
    audit["examples"] = [example for a in audits for example in a["examples"]][:max_examples]
    audit["seconds"] = round(seconds, 3)
    audit["records_per_second"] = round(audit["records_in"] / seconds, 2) if seconds > 0 else None
    audit["partitions"] = len(audits)
    return audit


def _table(title: str, rows: dict[str, Any], headers: tuple[str, str]) -> str:
    body = (
        "".join(
            f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(str(value))}</td></tr>"
            for key, value in rows.items()
        )
        or "<tr><td colspan=2>none</td></tr>"
    )
    return f"<h2>{html.escape(title)}</h2><table><tr><th>{headers[0]}</th><th>{headers[1]}</th></tr>{body}</table>"


def render_audit_html(audit: dict[str, Any]) -> str:
    """A one-page view of the audit (every value escaped; examples are the anonymized texts)."""
    curation = audit.get("curation", {})
    summary = {
        "records in (collected)": curation.get("records_in", audit["records_in"]),
        "removed by curation": curation.get("records_removed", 0),
        "records anonymized": audit["records_out"],
        "records with PII replaced": audit["records_with_pii"],
        "records per second": audit["records_per_second"],
        "pseudonyms": json.dumps(audit["pseudonyms"]),
    }
    occurrences = audit["entities"]
    per_type = {
        entity: f"{occurrences.get(entity, 0)} in {audit['records_per_entity'].get(entity, 0)} records"
        for entity in audit["entities_config"]
    }
    examples = "".join(
        f"<div class=ex><b>{html.escape(example['record_id'])}</b> "
        f"<small>{html.escape(json.dumps(example['entities']))}</small>"
        f"<pre>{html.escape(example['request'])}</pre><pre>{html.escape(example['response'])}</pre></div>"
        for example in audit.get("examples", [])
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>S2 anonymization audit</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left}pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}"
        ".ex{margin:1em 0}</style></head><body><h1>S2 curation and anonymization audit</h1>"
        + _table("Summary", summary, ("", ""))
        + _table("Removed by curation, per reason", curation.get("removed_by_reason", {}), ("reason", "records"))
        + _table("Replaced, per entity type", per_type, ("entity type", "occurrences"))
        + "<h2>Examples (anonymized)</h2>"
        + (examples or "<p>none</p>")
        + "</body></html>"
    )
