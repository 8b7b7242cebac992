"""S2 audit: counts per entity type and removal reason, anonymized examples only, and an escaped HTML view."""

from collections import Counter

from components.core.schema import CallRecord, ChatMessage
from components.curate.audit import build_audit, merge_audits, render_audit_html
from tests.support.anonymizer_fixture import CFG


def record(record_id: str, user: str) -> CallRecord:
    return CallRecord(
        record_id=record_id,
        messages=[ChatMessage(role="user", content=user)],
        response=ChatMessage(role="assistant", content="Done <b>now</b>."),
    )


def test_audit_counts_entities_per_occurrence_and_record_and_shows_anonymized_examples_only():
    raw = [record("a", "Mail ann@example.org and Ann Lee."), record("b", "No PII here."), record("c", "Call Ann Lee.")]
    clean = [record("a", "Mail <EMAIL_ADDRESS_1> and <PERSON_1>."), raw[1], record("c", "Call <PERSON_1>.")]
    counts = [Counter({"EMAIL_ADDRESS": 1, "PERSON": 1}), Counter(), Counter({"PERSON": 1})]
    audit = build_audit(raw, clean, counts, CFG.model_copy(update={"audit_examples": 1}), seconds=0.5)
    assert audit["entities"] == {"EMAIL_ADDRESS": 1, "PERSON": 2}
    assert audit["records_per_entity"] == {"EMAIL_ADDRESS": 1, "PERSON": 2}
    assert (audit["records_with_pii"], audit["records_per_second"]) == (2, 6.0)
    assert audit["examples"] == [
        {
            "record_id": "a",
            "entities": {"EMAIL_ADDRESS": 1, "PERSON": 1},
            "request": "Mail <EMAIL_ADDRESS_1> and <PERSON_1>.",
            "response": "Done <b>now</b>.",
        }
    ]
    audit["curation"] = {"records_in": 5, "records_removed": 2, "removed_by_reason": {"exact_duplicate": 2}}
    page = render_audit_html(audit)
    assert "ann@example.org" not in page and "Ann Lee" not in page
    assert "&lt;EMAIL_ADDRESS_1&gt;" in page and "<b>now</b>" not in page  # examples are escaped
    assert "exact_duplicate" in page and "STREET_ADDRESS" in page


def test_audits_of_partitions_merge_into_the_audit_of_one_pass():
    raw = [record("a", "Mail ann@example.org."), record("b", "No PII here."), record("c", "Call Ann Lee.")]
    clean = [record("a", "Mail <EMAIL_ADDRESS_1>."), raw[1], record("c", "Call <PERSON_1>.")]
    counts = [Counter({"EMAIL_ADDRESS": 2}), Counter(), Counter({"PERSON": 1, "EMAIL_ADDRESS": 1})]
    cfg = CFG.model_copy(update={"audit_examples": 5})
    one_pass = build_audit(raw, clean, counts, cfg, seconds=1.5)
    parts = [
        build_audit(raw[:2], clean[:2], counts[:2], cfg, 9.0),
        build_audit(raw[2:], clean[2:], counts[2:], cfg, 9.0),
    ]
    merged = merge_audits(parts, seconds=1.5, max_examples=cfg.audit_examples)
    assert merged == {**one_pass, "partitions": 2}
    assert [e["record_id"] for e in merge_audits(parts, 1.5, max_examples=1)["examples"]] == ["a"]
