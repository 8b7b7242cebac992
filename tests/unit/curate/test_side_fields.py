"""S2 passes every field of a record through a rule: ids from logs become keyed ids, metadata keeps only
allow-listed keys (analyzed) and the product's typed keys, participant names and agent names are not kept raw."""

import json

import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.anonymize import Anonymizer
from components.curate.side_fields import RECORD_FIELD_RULES, SCHEMA_RULES, fields_without_a_rule, typed_route
from tests.support.anonymizer_fixture import shared_anonymizer

SESSION = "web:jane.doe@mail.com:3"
CUSTOMER = {"name": "Jane Doe", "email": "jane.doe@mail.com", "phone": "(415) 867-5309", "tier": 2}
NOTE = "escalate to Robert Miller, 212-555-0187"


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return shared_anonymizer()


def logged_call(record_id: str = "web:jane.doe@mail.com:3#1", agent: str = "jane.doe@mail.com-bot") -> CallRecord:
    return CallRecord(
        record_id=record_id,
        agent=agent,
        source="jsonl:/home/jane.doe/agent-log.jsonl",
        model="gpt-4o",
        conversation_id=SESSION,
        metadata={
            "customer": CUSTOMER,
            "crm_note": NOTE,
            "route": {"route": "llm", "cluster_id": 3, "reason": "below threshold"},
            "origin": "log",
        },
        messages=[
            ChatMessage(role="user", content="What is the status of my order?", name="jane_doe"),
            ChatMessage(role="assistant", tool_calls=[ToolCall(id="call_jane_1", name="order_status", arguments="{}")]),
            ChatMessage(role="tool", tool_call_id="call_jane_1", content="shipped"),
        ],
        response=ChatMessage(role="assistant", content="It has shipped."),
    )


def test_every_field_of_the_record_has_a_rule_and_a_new_field_without_one_is_found():
    assert fields_without_a_rule() == []

    class WithTier(CallRecord):
        customer_tier: str | None = None

    assert fields_without_a_rule({WithTier: RECORD_FIELD_RULES}) == ["WithTier.customer_tier"]
    assert set(SCHEMA_RULES) == {CallRecord, ChatMessage, ToolCall}


def test_no_side_field_keeps_a_raw_value_and_allow_listed_metadata_is_anonymized(anonymizer, monkeypatch):
    monkeypatch.setattr(anonymizer, "cfg", anonymizer.cfg.model_copy(update={"metadata_keys": ["customer"]}))
    clean, _ = anonymizer.anonymize_record(logged_call())
    text = clean.model_dump_json()
    for value in ("jane.doe", "Jane Doe", "jane_doe", "867-5309", "Robert Miller", "555-0187", "/home/"):
        assert value not in text, value
    customer = clean.metadata["customer"]
    assert customer["email"] == "<EMAIL_ADDRESS_1>" and customer["phone"].startswith("<PHONE_NUMBER_")
    assert customer["tier"] == 2  # a number with nothing personal in its text keeps its type
    assert "crm_note" not in clean.metadata  # not allow-listed: dropped
    assert clean.metadata["route"] == {"route": "llm", "cluster_id": 3}  # the product's key, in its typed form
    assert clean.metadata["origin"] == "log"
    assert clean.source == "jsonl" and clean.model == "gpt-4o"
    assert clean.agent.startswith("agent-") and clean.conversation_id.startswith("conv-")
    # Keyed ids keep what the ids are for: a tool call still matches its result.
    assert clean.messages[1].tool_calls[0].id == clean.messages[2].tool_call_id != "call_jane_1"
    assert clean.messages[0].name.startswith("participant-")


def test_keyed_ids_keep_a_conversation_together_and_plain_agent_labels_stay(anonymizer):
    first, _ = anonymizer.anonymize_record(logged_call("a#1", agent="default"))
    second, _ = anonymizer.anonymize_record(logged_call("a#2", agent="default"))
    assert first.conversation_id == second.conversation_id
    assert first.record_id != second.record_id
    assert first.agent == "default"  # anonymize.agent_labels
    assert "crm_note" not in first.metadata and "customer" not in first.metadata  # no metadata_keys: all dropped


@pytest.mark.parametrize(
    "value",
    [
        {"route": "llm", "cluster_id": "Jane"},
        {"route": "Jane Doe"},
        "slm",
        {"cluster_id": 2},
        {"route": "slm", "cluster_id": True},
    ],
)
def test_a_route_that_is_not_the_products_typed_form_is_not_kept(value):
    assert typed_route(value) is None


def test_metadata_numbers_are_checked_as_their_text(anonymizer, monkeypatch):
    monkeypatch.setattr(anonymizer, "cfg", anonymizer.cfg.model_copy(update={"metadata_keys": ["contact"]}))
    record = logged_call().model_copy(
        update={"metadata": {"contact": {"email": "bob.stone@mail.com", "ip": "10.1.2.3"}}}
    )
    clean, _ = anonymizer.anonymize_record(record)
    assert "bob.stone" not in json.dumps(clean.metadata) and "10.1.2.3" not in json.dumps(clean.metadata)


def test_a_task_pinned_by_an_agent_name_s2_would_hash_is_refused(tmp_path):
    import yaml

    from components.core.config import load_params
    from flows.steps import load_pipeline_config

    params = load_params()
    params["discover"]["pinned_tasks"] = [{"name": "billing", "agent": "billing-bot"}]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"\['billing-bot'\].*anonymize.agent_labels"):
        load_pipeline_config(path)
    params["anonymize"]["agent_labels"].append("billing-bot")
    path.write_text(yaml.safe_dump(params))
    assert load_pipeline_config(path).steps["anonymize"].agent_labels[-1] == "billing-bot"


def test_a_selective_calls_gate_is_kept_typed_and_anything_else_in_the_route_is_dropped():
    logged = {
        "route": "llm",
        "cluster_id": 3,
        "reason": "confidence below threshold",
        "confidence": 0.41,
        "threshold": 0.7,
        "decision": "defer",
        "latency_ms": 812,
        "backend": "embedded (transformers-eager)",
    }
    assert typed_route(logged) == {
        "route": "llm",
        "cluster_id": 3,
        "confidence": 0.41,
        "threshold": 0.7,
        "latency_ms": 812.0,
        "decision": "defer",
    }
    # Values of the wrong type (text where a number goes, a decision the router never writes, NaN) are not kept.
    forged = {**logged, "confidence": "Jane Doe", "threshold": float("nan"), "latency_ms": True, "decision": "Jane"}
    assert typed_route(forged) == {"route": "llm", "cluster_id": 3}
    # A call the gate could not score: no confidence, the decision is still kept.
    assert typed_route({"route": "llm", "cluster_id": 3, "confidence": None, "decision": "defer"}) == {
        "route": "llm",
        "cluster_id": 3,
        "decision": "defer",
    }
