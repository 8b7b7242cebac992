"""S2: personal data is replaced everywhere in a record, consistently, and the audit holds counts only.

Uses the real spaCy model asset (LLM2SLM_CACHE); the Anonymizer is built once for the module because loading
spaCy and Presidio's recognizers takes seconds.
"""

import json
import re

import pytest
from pydantic import ValidationError

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.anonymize import AnonymizeConfig, Anonymizer, anonymize_records
from tests.support.anonymizer_fixture import CFG, shared_anonymizer

SYSTEM = "You are a helpful assistant. Never reveal the SSN."
EMAIL = "john.smith@example.com"
OTHER_EMAIL = "maria.garcia@corp.org"
PHONE = "(415) 867-5309"


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return shared_anonymizer()


def record(
    user: str, response: ChatMessage, record_id: str = "r1", history: list[ChatMessage] | None = None
) -> CallRecord:
    messages = [ChatMessage(role="system", content=SYSTEM), *(history or []), ChatMessage(role="user", content=user)]
    return CallRecord(record_id=record_id, messages=messages, response=response)


def tool_response(name: str, arguments: dict | str) -> ChatMessage:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name=name, arguments=text)])


def test_name_email_and_phone_in_the_prompt_are_replaced(anonymizer):
    original = record(
        f"Hi, I am John Smith, write to {EMAIL} or call me at {PHONE}.", ChatMessage(role="assistant", content="Sure.")
    )
    clean, counts = anonymizer.anonymize_record(original)
    user = clean.messages[-1].content
    for value in ("John Smith", EMAIL, PHONE, "867-5309"):
        assert value not in user
    assert user == "Hi, I am <PERSON_1>, write to <EMAIL_ADDRESS_1> or call me at <PHONE_NUMBER_1>."
    assert counts == {"PERSON": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}


def test_the_same_email_gets_the_same_placeholder_in_prompt_and_tool_call(anonymizer):
    original = record(
        f"Tell {EMAIL} that the meeting moved.",
        tool_response("send_email", {"to": EMAIL, "body": "The meeting moved."}),
    )
    clean, _ = anonymizer.anonymize_record(original)
    assert clean.messages[-1].content == "Tell <EMAIL_ADDRESS_1> that the meeting moved."
    assert clean.response.tool_calls[0].parsed_arguments() == {"to": "<EMAIL_ADDRESS_1>", "body": "The meeting moved."}


def test_different_values_get_different_placeholders_numbered_in_order_of_appearance(anonymizer):
    original = record(
        f"Forward the mail from {EMAIL} to {OTHER_EMAIL}.",
        tool_response("forward", {"source": EMAIL, "target": OTHER_EMAIL}),
    )
    clean, counts = anonymizer.anonymize_record(original)
    assert clean.messages[-1].content == "Forward the mail from <EMAIL_ADDRESS_1> to <EMAIL_ADDRESS_2>."
    assert clean.response.tool_calls[0].parsed_arguments() == {
        "source": "<EMAIL_ADDRESS_1>",
        "target": "<EMAIL_ADDRESS_2>",
    }
    assert counts["EMAIL_ADDRESS"] == 4


def test_a_name_missed_by_ner_in_an_argument_follows_the_prompt_mapping(anonymizer):
    # spaCy does not tag a bare "Emma"; values (and name parts) found elsewhere in the record are replaced literally.
    original = record(
        "Please book a table for Emma Johnson tonight.",
        tool_response("book_table", {"first_name": "Emma", "last_name": "Johnson", "party_size": 2}),
    )
    clean, _ = anonymizer.anonymize_record(original)
    # The call passes the name on in two parts the request states: each part is one unit, so each argument is still
    # a copy of the prompt (one tag for both would make first and last name the same value).
    assert clean.messages[-1].content == "Please book a table for <PERSON_1> <PERSON_2> tonight."
    assert clean.response.tool_calls[0].parsed_arguments() == {
        "first_name": "<PERSON_1>",
        "last_name": "<PERSON_2>",
        "party_size": 2,
    }


def test_ner_guesses_in_bare_arguments_need_the_conversation_to_hold_the_value(anonymizer):
    # Alone, "JPY" looks like a name to spaCy (as seen on the demo data; so did "vacuum", which the lower-case rule
    # now drops at detection: NER's names and places without a capital are mostly misread words)...
    guessed = anonymizer.analyze_texts(["JPY", "vacuum"])
    assert any(span.entity_type == "PERSON" for span in guessed["JPY"]) and guessed["vacuum"] == []
    # ... but the LLM wrote them from general knowledge (a currency code, a schema default), not from the user.
    original = record(
        f"Convert 100 British pounds to Japanese yen for {EMAIL}.",
        tool_response("convert", {"to": "JPY", "medium": "vacuum", "notify": EMAIL}),
    )
    clean, _ = anonymizer.anonymize_record(original)
    assert clean.response.tool_calls[0].parsed_arguments() == {
        "to": "JPY",
        "medium": "vacuum",
        "notify": "<EMAIL_ADDRESS_1>",
    }
    # A name the conversation does hold is replaced in the arguments, with the prompt's placeholder.
    named = record(
        "Please book a table for Emma Johnson tonight.",
        tool_response("book_table", {"guest": "Emma Johnson", "medium": "vacuum"}),
    )
    clean, _ = anonymizer.anonymize_record(named)
    assert clean.response.tool_calls[0].parsed_arguments() == {"guest": "<PERSON_1>", "medium": "vacuum"}
    # Written another way than in the prompt (word order, apostrophe, accents), a name is still replaced.
    for prompt, argument in (
        ("Book a table for Smith, John tonight.", "John Smith"),
        ("Book a table for Kevin O’Brien tonight.", "Kevin O'Brien"),
        ("Book a table for José García tonight.", "Jose Garcia"),
    ):
        assert any(span.entity_type == "PERSON" for span in anonymizer.analyze_texts([argument])[argument])
        clean, _ = anonymizer.anonymize_record(record(prompt, tool_response("book_table", {"guest": argument})))
        written = clean.response.tool_calls[0].parsed_arguments()["guest"]
        assert written.startswith("<PERSON_") and not set(argument.split()) & set(written.split()), written


def test_a_name_with_an_article_or_quotes_in_the_prompt_keeps_its_placeholder_in_the_arguments(anonymizer):
    # Demo calls where spaCy took "the" and a quote into the span, so the argument got a second placeholder.
    trip = record(
        "Get me the travel distance and duration from the Eiffel Tower to the Louvre Museum",
        tool_response("distance", {"start_location": "Eiffel Tower", "traffic": False}),
    )
    clean, _ = anonymizer.anonymize_record(trip)
    start = clean.response.tool_calls[0].parsed_arguments()["start_location"]
    assert start.startswith("<") and f"from the {start} to" in clean.messages[-1].content
    song = record(
        "Find the lyrics to the song 'Bohemian Rhapsody' by Queen.",
        tool_response("lyrics", {"song_title": "Bohemian Rhapsody"}),
    )
    clean, _ = anonymizer.anonymize_record(song)
    title = clean.response.tool_calls[0].parsed_arguments()["song_title"]
    assert title.startswith("<") and f"song '{title}' by" in clean.messages[-1].content


def test_a_date_in_digits_is_not_a_phone_number(anonymizer):
    # libphonenumber accepts "07-20-2022" in one of the configured regions (seen on the demo data).
    original = record(
        f"Book a room from May 12, 2022 to July 20, 2022 and call me at {PHONE}.",
        tool_response("book", {"from_date": "05-12-2022", "to_date": "07-20-2022", "phone": PHONE}),
    )
    clean, _ = anonymizer.anonymize_record(original)
    assert clean.response.tool_calls[0].parsed_arguments() == {
        "from_date": "05-12-2022",
        "to_date": "07-20-2022",
        "phone": "<PHONE_NUMBER_1>",
    }


def test_a_name_typed_in_lower_case_is_found_through_the_call_that_spells_it(anonymizer):
    prompt = "please book a table for emma johnson tonight, and one for will."
    found = anonymizer.analyze_texts([prompt])[prompt]
    assert not any(span.start <= prompt.index("emma") < span.end for span in found)  # NER alone misses "emma"
    clean, _ = anonymizer.anonymize_record(record(prompt, tool_response("book_table", {"guest": "Emma Johnson"})))
    guest = clean.response.tool_calls[0].parsed_arguments()["guest"]
    assert guest.startswith("<PERSON_")
    assert clean.messages[-1].content == f"please book a table for {guest} tonight, and one for will."


def test_keys_inside_an_argument_are_data_and_top_level_keys_are_parameter_names(anonymizer):
    original = record(
        "Deal the cards to Emma Johnson and to me.",
        tool_response("deal", {"hands": {"Emma Johnson": ["A"], "Emma": ["Q"], "me": ["K"]}}),
    )
    clean, _ = anonymizer.anonymize_record(original)
    arguments = clean.response.tool_calls[0].arguments
    assert "Emma" not in arguments and "Johnson" not in arguments
    # The first name takes the full name's placeholder; the two hands stay two entries.
    assert json.loads(arguments) == {"hands": {"<PERSON_1>": ["A"], "<PERSON_1>#2": ["Q"], "me": ["K"]}}


def test_tool_call_arguments_stay_valid_json_with_their_non_string_values(anonymizer):
    arguments = {"recipients": [EMAIL, {"cc": OTHER_EMAIL}], "urgent": True, "retries": 3, "note": None}
    clean, _ = anonymizer.anonymize_record(record(f"Mail {EMAIL}.", tool_response("send", arguments)))
    parsed = json.loads(clean.response.tool_calls[0].arguments)
    assert parsed == {
        "recipients": ["<EMAIL_ADDRESS_1>", {"cc": "<EMAIL_ADDRESS_2>"}],
        "urgent": True,
        "retries": 3,
        "note": None,
    }


def test_arguments_that_are_not_json_are_anonymized_as_text(anonymizer):
    truncated = f'{{"to": "{EMAIL}"'  # an LLM cut off mid-object
    clean, _ = anonymizer.anonymize_record(record("Go.", tool_response("send", truncated)))
    assert clean.response.tool_calls[0].arguments == '{"to": "<EMAIL_ADDRESS_1>"'


def test_history_tool_calls_and_tool_results_are_anonymized_too(anonymizer):
    history = [
        ChatMessage(role="user", content=f"Look up the account of {EMAIL}."),
        ChatMessage(
            role="assistant", tool_calls=[ToolCall(id="a", name="lookup", arguments=json.dumps({"email": EMAIL}))]
        ),
        ChatMessage(role="tool", tool_call_id="a", content=f"Account owner: Emma Johnson, phone {PHONE}"),
    ]
    original = record("Now send her the invoice.", tool_response("send_invoice", {"email": EMAIL}), history=history)
    clean, _ = anonymizer.anonymize_record(original)
    dumped = clean.model_dump_json()
    for value in (EMAIL, "Emma Johnson", PHONE):
        assert value not in dumped
    assert clean.messages[2].tool_calls[0].parsed_arguments() == {"email": "<EMAIL_ADDRESS_1>"}
    assert clean.messages[3].content == "Account owner: <PERSON_1>, phone <PHONE_NUMBER_1>"
    assert clean.response.tool_calls[0].parsed_arguments() == {"email": "<EMAIL_ADDRESS_1>"}


def test_a_record_without_pii_is_unchanged_and_unconfigured_types_are_kept(anonymizer):
    # "SSN" is tagged ORGANIZATION by spaCy; ORGANIZATION is not configured, so it must stay.
    original = record(
        "What is the weather like tomorrow?", tool_response("get_forecast", '{"days":1, "units":"metric"}')
    )
    clean, counts = anonymizer.anonymize_record(original)
    # Logged ids (record, conversation, tool call) always become keyed ids; every text stays as it was.
    ids = {"record_id": True, "conversation_id": True, "response": {"tool_calls": {0: {"id"}}}}
    assert clean.model_dump(exclude=ids) == original.model_dump(exclude=ids)
    assert clean.record_id == anonymizer.pseudonymizer.keyed_id("call", original.record_id)
    assert clean.response.tool_calls[0].arguments == '{"days":1, "units":"metric"}'
    assert clean.messages[0].content == SYSTEM
    assert counts == {}


def test_records_keep_ids_and_order_and_the_audit_holds_no_values(anonymizer, monkeypatch):
    import types

    import components.curate.anonymize as anonymize_module

    # A clock that reads 10.0 s when the records start and 11.5 s when they are done: 3 records in 1.5 s.
    clock = iter([10.0, 11.5])
    monkeypatch.setattr(anonymize_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    records = [
        record(f"Write to {EMAIL}.", tool_response("send", {"to": EMAIL}), record_id="b"),
        record("What time is it?", ChatMessage(role="assistant", content="Noon."), record_id="a"),
        record(f"Call John Smith at {PHONE}.", tool_response("call", {"number": PHONE}), record_id="c"),
    ]
    seen: list[tuple[int, int]] = []
    clean, audit = anonymize_records(
        records, CFG, progress=lambda done, total: seen.append((done, total)), anonymizer=anonymizer
    )
    assert [r.record_id for r in clean] == [anonymizer.pseudonymizer.keyed_id("call", i) for i in ("b", "a", "c")]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert (audit["records_in"], audit["records_out"], audit["records_with_pii"]) == (3, 3, 2)
    assert audit["entities"] == {"EMAIL_ADDRESS": 2, "PERSON": 1, "PHONE_NUMBER": 2}
    assert audit["entities_config"] == CFG.entities
    assert (audit["seconds"], audit["records_per_second"]) == (1.5, 2.0)
    text = json.dumps(audit)
    for value in (EMAIL, "John Smith", "John", PHONE, "867-5309"):
        assert value not in text


def test_thresholds_for_types_that_are_not_detected_are_rejected():
    with pytest.raises(ValidationError, match="IBAN"):
        AnonymizeConfig(input="i", output="o", audit="a", entities=["PERSON"], entity_thresholds={"IBAN_CODE": 0.3})
    # The default phone override must not make a config without phones invalid.
    assert AnonymizeConfig(input="i", output="o", audit="a", entities=["PERSON"]).threshold_for("PERSON") == 0.5


# Fake credentials in the real formats; none of them is live.
OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github_pat_11ABCDEFG0" + "x" * 40
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTYifQ.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9\nq3xyz+/w==\n-----END RSA PRIVATE KEY-----"
MASTERCARD_2_SERIES = "2221 0000 0000 0009"  # Luhn-valid test number


@pytest.mark.parametrize("secret", [OPENAI_KEY, AWS_KEY, GITHUB_TOKEN, GITHUB_PAT, PEM])
def test_api_keys_tokens_and_private_keys_become_secret_placeholders(anonymizer, secret):
    clean, counts = anonymizer.anonymize_record(
        record(f"Deploy with this key:\n{secret}\nthanks", tool_response("deploy", {"credential": secret}))
    )
    assert clean.messages[-1].content == "Deploy with this key:\n<SECRET_1>\nthanks"
    assert clean.response.tool_calls[0].parsed_arguments() == {"credential": "<SECRET_1>"}
    assert counts == {"SECRET": 2}


def test_only_the_token_after_bearer_is_replaced_and_prose_about_bearer_auth_is_kept(anonymizer):
    clean, _ = anonymizer.anonymize_record(
        record(
            f"Call the API with header Authorization: Bearer {JWT} please.",
            ChatMessage(role="assistant", content="Bearer authentication works."),
        )
    )
    assert clean.messages[-1].content == "Call the API with header Authorization: Bearer <SECRET_1> please."
    assert clean.response.content == "Bearer authentication works."


def test_key_lookalikes_in_ordinary_text_are_kept(anonymizer):
    text = "The sk-learn docs mention akiaiosfodnn7example and the ghp_ prefix; BEGIN PRIVATE KEY is a header."
    clean, counts = anonymizer.anonymize_record(record(text, ChatMessage(role="assistant", content="Noted.")))
    assert clean.messages[-1].content == text and "SECRET" not in counts


def test_mastercard_2_series_numbers_are_cards_only_when_luhn_valid(anonymizer):
    clean, counts = anonymizer.anonymize_record(
        record(f"Charge card {MASTERCARD_2_SERIES} for the order.", ChatMessage(role="assistant", content="Done."))
    )
    assert clean.messages[-1].content == "Charge card <CREDIT_CARD_1> for the order."
    assert counts == {"CREDIT_CARD": 1}
    invalid = "2221 0000 0000 0008"
    clean, counts = anonymizer.anonymize_record(
        record(f"Order reference {invalid} shipped.", ChatMessage(role="assistant", content="Done."))
    )
    assert "CREDIT_CARD" not in counts


@pytest.mark.parametrize(
    "text",
    [
        "SSN",
        "What is your SSN?",
        "Never reveal the SSN or the ssn of Bob's kids.",
        "SSN: required. Ask the user for their SSN before filing.",
    ],
)
def test_the_word_ssn_is_never_replaced(anonymizer, text):
    clean, _ = anonymizer.anonymize_record(
        record(text, ChatMessage(role="assistant", content="Please give me your SSN."))
    )
    assert clean.messages[-1].content.count("SSN") == text.count("SSN")
    assert clean.response.content == "Please give me your SSN."


def test_ssn_stays_even_when_a_recognizer_tags_it(anonymizer):
    # The spaCy model in use happens not to tag "SSN"; a recognizer that does must still not get it replaced.
    from presidio_analyzer import PatternRecognizer

    tagger = PatternRecognizer(supported_entity="PERSON", name="SsnAsPersonForTest", deny_list=["SSN"])
    anonymizer._analyzer.registry.add_recognizer(tagger)
    try:
        clean, counts = anonymizer.anonymize_record(
            record("Store the SSN of the applicant in the vault.", ChatMessage(role="assistant", content="Stored."))
        )
    finally:
        anonymizer._analyzer.registry.remove_recognizer("SsnAsPersonForTest")
    assert clean.messages[-1].content == "Store the SSN of the applicant in the vault."
    assert "PERSON" not in counts


def test_a_transformers_engine_needs_a_model_and_schema_types_default_to_the_structured_ones():
    with pytest.raises(ValidationError, match="transformers_model"):
        AnonymizeConfig(input="i", output="o", audit="a", nlp_engine="transformers")
    assert "PERSON" not in CFG.schema_entity_types() and "EMAIL_ADDRESS" in CFG.schema_entity_types()
    assert CFG.model_copy(update={"tool_schema_entities": ["PERSON"]}).schema_entity_types() == {"PERSON"}


VOICES = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {"type": "object", "properties": {"voice": {"type": "string", "enum": ["Brian", "Amy", "Emma"]}}},
    },
}
REQUEST_WITH_A_SUB_DISTRICT = (  # a BFCL live request: NER took "Ton Pao Subdistrict" for a person
    "Help find a housewife who provides ironing services in Chiang Mai, Sankampang District, Ton Pao Subdistrict, "
    "with a review of 4.5 stars"
)


def stated(value: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


@pytest.mark.parametrize(
    ("request_text", "arguments", "tools", "unchanged"),
    [
        # a value inside a longer detection: one unit, the same surrogate in request and call
        (REQUEST_WITH_A_SUB_DISTRICT, {"district_name": "Sankampang", "sub_district_name": "Ton Pao"}, [], False),
        # words NER misreads as names or places when they have no capital: not personal data, kept as they are
        ("Give me the answer in json format", {"type": "json"}, [], True),
        ("Run the command echo %time% on my machine", {"command": "echo %time%"}, [], True),
        # a member of an offered tool's enum is the tool's vocabulary, kept as it is
        ("Read this aloud with the voice Brian, please.", {"voice": "Brian"}, [VOICES], True),
    ],
)
def test_a_value_the_request_states_is_still_stated_after_anonymization(
    anonymizer, request_text, arguments, tools, unchanged
):
    """S2 keeps the task: each argument value the request states is, after S2, still stated by the anonymized
    request (unchanged, or the same surrogate in both), so the label stays derivable from its prompt."""
    original = record(request_text, tool_response("f", arguments)).model_copy(update={"tools": tools})
    clean, _ = anonymizer.anonymize_record(original)
    values = clean.response.tool_calls[0].parsed_arguments()
    assert all(stated(value, clean.messages[-1].content) for value in values.values()), clean
    if unchanged:
        assert values == arguments


def test_a_place_the_call_extends_keeps_the_requests_surrogate(anonymizer):
    original = record("What's the weather in Berkeley tomorrow?", tool_response("f", {"location": "Berkeley, CA"}))
    clean, _ = anonymizer.anonymize_record(original)
    assert clean.messages[-1].content == "What's the weather in <LOCATION_1> tomorrow?"
    assert clean.response.tool_calls[0].parsed_arguments() == {"location": "<LOCATION_1>, CA"}
