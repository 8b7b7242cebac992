"""S2 recognizers beyond Presidio's defaults: street addresses, IBAN, PHI, high-entropy secrets, North American
phones, allow and deny lists, tool schemas' free text, and errors that never quote the text."""

import json

import pytest

import components.curate.anonymize as anonymize_module
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.anonymize import (
    AnonymizationError,
    Anonymizer,
    anonymize_records,
    load_deny_list,
)
from components.curate.recognizers import looks_random
from tests.support.anonymizer_fixture import CFG, shared_anonymizer


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return shared_anonymizer()


def user_record(text: str, arguments: dict | None = None, tools: list | None = None) -> CallRecord:
    response = (
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="c", name="act", arguments=json.dumps(arguments))])
        if arguments is not None
        else ChatMessage(role="assistant", content="OK.")
    )
    return CallRecord(
        record_id="r", messages=[ChatMessage(role="user", content=text)], response=response, tools=tools or []
    )


def anonymized_text(anonymizer: Anonymizer, text: str) -> str:
    clean, _ = anonymizer.anonymize_record(user_record(text))
    return clean.messages[0].content


@pytest.mark.parametrize(
    "address",
    [
        "1600 Amphitheatre Parkway",
        "742 Evergreen Terrace, Apt. 2B",
        "55 W 3rd St, Springfield, IL 62704",
        "8620 Hurst Shore Suite 828",
        "30824 Thomas Crest Suite 821, West Connor, VT 08730",
        "P.O. Box 4411",
    ],
)
def test_street_addresses_are_replaced_whole(anonymizer, address):
    assert (
        anonymized_text(anonymizer, f"Ship the parcel to {address} by Friday.")
        == "Ship the parcel to <STREET_ADDRESS_1> by Friday."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Refund IBAN DE89 3704 0044 0532 0130 00 today.", "Refund IBAN <IBAN_CODE_1> today."),
        ("Patient MRN: 00482913 is due.", "Patient MRN: <MEDICAL_RECORD_NUMBER_1> is due."),
        ("Her member ID XJH123456789 expired.", "Her member ID <HEALTH_PLAN_ID_1> expired."),
        ("Medicare number 1EG4-TE5-MK73 on file.", "Medicare number <HEALTH_PLAN_ID_1> on file."),
        ("Set password=hunter2secret in the config.", "Set password=<SECRET_1> in the config."),
        ("The token is Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh6Jk0L.", "The token is <SECRET_1>."),
    ],
)
def test_iban_phi_and_secrets_without_a_vendor_prefix(anonymizer, text, expected):
    assert anonymized_text(anonymizer, text) == expected


def test_an_id_the_ner_model_calls_a_person_is_kept(anonymizer):
    text = "Order #A-20931 shipped on 2024-05-17 and costs $1,249.99 in total."  # spaCy tags "A-20931" PERSON
    assert anonymized_text(anonymizer, text) == text


def test_numbers_that_are_not_pii_are_kept(anonymizer):
    text = (
        "The order 20931 of 2024-05-17 costs $1,249.99; request 3f2b8c1e-9a7d-4c1e-8f2a-1b2c3d4e5f60 "
        "ran version 3.12.4 at floor 4 with get_weather_forecast_for_location."
    )
    assert anonymized_text(anonymizer, text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Hi, this is Paige Reed from accounting.",
        "Dear Cristian Davenport, welcome.",
        "My name is Tiffany Mckenzie and I need help.",
    ],
)
def test_names_after_introductions_are_people_even_when_ner_misses_them(anonymizer, text):
    assert "<PERSON_1>" in anonymized_text(anonymizer, text)


def test_high_entropy_rule_needs_length_mixed_classes_and_randomness():
    assert looks_random("Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh6Jk0L", 24, 3.5)
    assert looks_random("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", 24, 3.5)  # a hex digest
    assert not looks_random("get_weather_forecast_for_location", 24, 3.5)  # no digits
    assert not looks_random("3f2b8c1e-9a7d-4c1e-8f2a-1b2c3d4e5f60", 24, 3.5)  # a UUID is an id
    assert not looks_random("aaaaaaaaaaaa1111111111111", 24, 3.5)  # long but not random
    assert not looks_random("Ab1", 24, 3.5)


@pytest.mark.parametrize("phone", ["(212) 555-0147", "+1 415 730 9921", "646.212.4410"])
def test_north_american_numbers_are_phones(anonymizer, phone):
    assert (
        anonymized_text(anonymizer, f"Reach the desk on {phone} after nine.")
        == "Reach the desk on <PHONE_NUMBER_1> after nine."
    )


@pytest.fixture(scope="module")
def full_pipeline_anonymizer(tmp_path_factory) -> Anonymizer:
    """The whole spaCy pipeline (ner_only off), ORGANIZATION detected, a deny list and one more allowed word."""
    deny = tmp_path_factory.mktemp("deny") / "deny.yaml"
    deny.write_text("ORGANIZATION: [Globex]\nPERSON: [Bobby]\n")
    cfg = CFG.model_copy(
        update={"entities": [*CFG.entities, "ORGANIZATION"], "allow_list": ["SSN", "Acme"], "ner_only": False}
    )
    return Anonymizer(cfg, deny_list=load_deny_list(deny))


def test_deny_list_words_are_always_replaced_and_allow_list_words_never(full_pipeline_anonymizer, tmp_path):
    clean, _ = full_pipeline_anonymizer.anonymize_record(
        user_record("Bobby from Globex asked Acme about the SSN rules.")
    )
    assert clean.messages[0].content == "<PERSON_1> from <ORGANIZATION_1> asked Acme about the SSN rules."
    deny = tmp_path / "deny.yaml"
    deny.write_text("- Bobby\n")
    with pytest.raises(ValueError, match="deny.yaml") as error:
        load_deny_list(deny)
    assert "Bobby" not in str(error.value)


def test_tool_schema_free_text_is_anonymized_and_identifiers_kept(anonymizer):
    tool = {
        "type": "function",
        "function": {
            "name": "email_support",
            "description": "Escalate to maria.garcia@corp.org or (212) 555-0147. Units: Kelvin.",
            "parameters": {
                "type": "object",
                "required": ["to"],
                "properties": {
                    "to": {"type": "string", "format": "email", "enum": ["maria.garcia@corp.org", "help@corp.org"]},
                    "customer": {"type": "string", "description": "Full name, e.g. Olivia Bennett", "default": "null"},
                },
            },
        },
    }
    original = user_record(
        "Write to maria.garcia@corp.org about Olivia Bennett please.",
        {"to": "maria.garcia@corp.org", "customer": "Olivia Bennett"},
        [tool],
    )
    clean, _ = anonymizer.anonymize_record(original)
    function = clean.tools[0]["function"]
    dumped = json.dumps(clean.model_dump())
    assert "maria" not in dumped.lower() and "555-0147" not in dumped and "Olivia" not in dumped
    # Only the schema's structured types are looked for there; NER guesses on developer prose are not applied,
    # but a name the conversation revealed is replaced in the schema too.
    assert function["description"] == "Escalate to <EMAIL_ADDRESS_1> or <PHONE_NUMBER_1>. Units: Kelvin."
    properties = function["parameters"]["properties"]
    assert properties["customer"] == {"type": "string", "description": "Full name, e.g. <PERSON_1>", "default": "null"}
    assert function["name"] == "email_support" and function["parameters"]["required"] == ["to"]
    assert properties["to"]["format"] == "email" and properties["to"]["enum"][0] == "<EMAIL_ADDRESS_1>"
    assert clean.response.tool_calls[0].parsed_arguments() == {"to": "<EMAIL_ADDRESS_1>", "customer": "<PERSON_1>"}


def test_tool_schemas_are_left_alone_when_configured(anonymizer, monkeypatch):
    monkeypatch.setattr(anonymizer, "cfg", CFG.model_copy(update={"anonymize_tool_schemas": False}))
    tool = {"type": "function", "function": {"name": "f", "description": "Ask john.smith@example.com."}}
    clean, _ = anonymizer.anonymize_record(user_record("Mail john.smith@example.com.", None, [tool]))
    assert clean.tools == [tool]
    assert clean.messages[0].content == "Mail <EMAIL_ADDRESS_1>."


def test_a_failing_record_raises_an_error_that_names_the_record_not_its_text(anonymizer, monkeypatch):
    def broken(_self, text, _artifacts):
        raise ValueError(f"cannot analyse {text}")

    monkeypatch.setattr(Anonymizer, "_analyze", broken)
    anonymizer._analysis_cache.clear()
    with pytest.raises(AnonymizationError) as error:
        anonymize_records([user_record("Call John Smith at (212) 555-0147.")], CFG, anonymizer=anonymizer)
    assert "John" not in str(error.value) and "555" not in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_ner_only_pipeline_finds_the_same_people_and_places_as_the_full_one(anonymizer, full_pipeline_anonymizer):
    texts = [
        "Dr. Olivia Bennett met Rahul Mehta in Chicago on Monday.",
        "Send the report to Chen Wei at the Boston office, then call (212) 555-0147.",
    ]
    fast, full = anonymizer.analyze_texts(texts), full_pipeline_anonymizer.analyze_texts(texts)
    assert all(fast[t] and fast[t] == [s for s in full[t] if s.entity_type != "ORGANIZATION"] for t in texts)
    assert anonymize_module._LOWER_LEMMA in anonymizer._spacy.pipe_names


def test_skipping_ner_on_lowercase_texts_keeps_the_patterns(anonymizer, monkeypatch):
    monkeypatch.setattr(anonymizer, "cfg", CFG.model_copy(update={"skip_ner_without_capitals": True}))
    anonymizer._analysis_cache.clear()
    sent_to_ner: list[str] = []
    batch = anonymizer._nlp_engine.process_batch
    monkeypatch.setattr(
        anonymizer._nlp_engine, "process_batch", lambda texts, **kw: batch(sent_to_ner.extend(texts) or texts, **kw)
    )
    texts = ["mail ops@example.org or call (212) 555-0147 about the phone bill", "Ask Olivia Bennett."]
    spans = anonymizer.analyze_texts(texts)
    assert sent_to_ner == ["Ask Olivia Bennett."]
    assert [s.entity_type for s in spans[texts[0]]] == ["EMAIL_ADDRESS", "PHONE_NUMBER"]
    assert [s.entity_type for s in spans[texts[1]]] == ["PERSON"]
    anonymizer._analysis_cache.clear()


def test_a_known_first_name_with_a_surname_is_a_person_mid_sentence():
    from components.curate.recognizers import first_last_names

    text = "Please send the results to Elena Petrova at her address, and copy Kevin O'Brien."
    assert [text[a:b] for a, b in first_last_names(text)] == ["Elena Petrova", "Kevin O'Brien"]
    # capitalized words that are not a known first name followed by a surname stay as they are
    assert first_last_names("Book Flight to New York with Delta Airlines") == []
