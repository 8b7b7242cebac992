"""Pseudonyms: per-record numbering, keyed dataset-wide tags stable across runs, Faker surrogates seeded by the
key, the key file's permissions, and a reverse map that exists only when configured and only encrypted."""

import json
import os
import stat

import pytest
from cryptography.fernet import InvalidToken

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.curate.anonymize import anonymize_records
from components.curate.pseudonyms import PseudonymConfig, Pseudonymizer, decrypt_reverse_map, load_or_create_key
from tests.support.anonymizer_fixture import CFG, shared_anonymizer

EMAIL = "olivia.bennett@example.org"


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("LLM2SLM_PSEUDONYM_KEY", "test-key-1")
    return "LLM2SLM_PSEUDONYM_KEY"


def test_record_scope_numbers_per_record(tmp_path):
    cfg = PseudonymConfig(style="tag", key_file=str(tmp_path / "never.key"))
    pseudonymizer = Pseudonymizer(cfg)
    first, second = pseudonymizer.for_record("a"), pseudonymizer.for_record("b")
    assert first.placeholder_for("PERSON", "Ann Lee") == "<PERSON_1>"
    assert first.placeholder_for("PERSON", "Bo Chen") == "<PERSON_2>"
    assert first.placeholder_for("PERSON", "Ann Lee") == "<PERSON_1>"
    assert second.placeholder_for("PERSON", "Bo Chen") == "<PERSON_1>"
    assert pseudonymizer.reverse_map == {}


def test_logged_ids_become_keyed_ids_stable_under_one_key_and_unlinkable_without_it(monkeypatch, tmp_path):
    """S2 replaces ids taken from logs (a session id often embeds the user's email) with a keyed hash: equal ids
    stay equal (a conversation's calls still meet), a plain hash of the email would not hide it."""
    session = "web:jane.doe@mail.com:3"
    monkeypatch.setenv("LLM2SLM_PSEUDONYM_KEY", "first-key")
    first = Pseudonymizer(PseudonymConfig(style="tag"))
    assert first.keyed_id("conv", session) == first.keyed_id("conv", session)
    assert first.keyed_id("conv", session) != first.keyed_id("conv", session + "x")
    assert "jane" not in first.keyed_id("conv", session) and first.keyed_id("conv", session).startswith("conv-")
    monkeypatch.setenv("LLM2SLM_PSEUDONYM_KEY", "second-key")
    assert Pseudonymizer(PseudonymConfig(style="tag")).keyed_id("conv", session) != first.keyed_id("conv", session)


def test_one_value_keeps_one_placeholder_whatever_type_it_is_tagged_with(tmp_path):
    mapping = Pseudonymizer(PseudonymConfig(style="tag", key_file=str(tmp_path / "never.key"))).for_record("a")
    assert mapping.placeholder_for("LOCATION", "Montreal") == "<LOCATION_1>"
    assert mapping.placeholder_for("PERSON", "Montreal") == "<LOCATION_1>"  # NER's guess in a bare argument
    assert mapping.placeholder_for("PERSON", "Ann Lee") == "<PERSON_1>"  # numbering of a new value is unchanged
    assert mapping.placeholder_for("PERSON", "ann lee") == "<PERSON_1>"  # typed in lower case


def test_dataset_scope_tags_are_the_same_across_records_and_runs_and_depend_on_the_key(key_env, monkeypatch):
    cfg = PseudonymConfig(scope="dataset", style="tag")
    tag = Pseudonymizer(cfg).for_record("a").placeholder_for("EMAIL_ADDRESS", EMAIL)
    assert tag.startswith("<EMAIL_ADDRESS_") and "olivia" not in tag
    assert Pseudonymizer(cfg).for_record("b").placeholder_for("EMAIL_ADDRESS", EMAIL.upper()) == tag  # a new run
    monkeypatch.setenv(key_env, "another-key")
    assert Pseudonymizer(cfg).for_record("a").placeholder_for("EMAIL_ADDRESS", EMAIL) != tag


def test_surrogates_are_realistic_stable_and_split_names_follow_the_full_name(key_env):
    cfg = PseudonymConfig(style="surrogate", style_per_entity={"SECRET": "tag"})
    mapping = Pseudonymizer(cfg).for_record("a")
    name = mapping.placeholder_for("PERSON", "Olivia Bennett")
    email = mapping.placeholder_for("EMAIL_ADDRESS", EMAIL)
    assert len(name.split()) == 2 and name != "Olivia Bennett" and not name.startswith("<")
    assert email.endswith("@example.com") and email != EMAIL
    assert mapping.placeholder_for("PERSON", "Olivia") == name.split()[0]
    assert mapping.placeholder_for("PERSON", "Bennett") == name.split()[1]
    assert mapping.placeholder_for("SECRET", "sk-abc") == "<SECRET_1>"
    assert Pseudonymizer(cfg).for_record("z").placeholder_for("PERSON", "Olivia Bennett") == name


def test_a_surrogate_that_occurs_in_the_raw_input_is_never_handed_out(key_env):
    cfg = PseudonymConfig(style="surrogate")
    first_choice = Pseudonymizer(cfg).for_record("a").placeholder_for("PERSON", "Olivia Bennett")
    pseudonymizer = Pseudonymizer(cfg)
    # the surrogate drawn first is a real customer of another record: the next draw is taken instead
    pseudonymizer.avoid_values_in([f"Dear {first_choice.upper()}, your order shipped."])
    other = pseudonymizer.for_record("a").placeholder_for("PERSON", "Olivia Bennett")
    assert other != first_choice and not other.startswith("<") and len(other.split()) == 2
    assert pseudonymizer.for_record("b").placeholder_for("PERSON", "Olivia Bennett") == other  # still stable


def test_key_file_is_created_owner_only_and_a_shared_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM2SLM_PSEUDONYM_KEY", raising=False)
    path = tmp_path / "keys" / "pseudonym.key"
    cfg = PseudonymConfig(scope="dataset", style="tag", key_file=str(path))
    key = load_or_create_key(cfg)
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(cfg) == key  # stable across runs
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_key(cfg)


def test_reverse_map_is_kept_only_when_configured_and_only_encrypted(key_env):
    record = CallRecord(
        record_id="r1",
        messages=[ChatMessage(role="user", content=f"Mail {EMAIL} now.")],
        response=ChatMessage(
            role="assistant", tool_calls=[ToolCall(id="c", name="send", arguments=json.dumps({"to": EMAIL}))]
        ),
    )
    anonymizer = shared_anonymizer()
    plain = Pseudonymizer(PseudonymConfig(style="tag"))
    anonymizer.pseudonymizer, saved = plain, anonymizer.pseudonymizer
    try:
        anonymize_records([record], CFG, anonymizer=anonymizer)
        assert plain.reverse_map == {}
        keeping = Pseudonymizer(PseudonymConfig(reverse_map="private/map.bin", scope="dataset"))
        anonymizer.pseudonymizer = keeping
        clean, audit = anonymize_records([record], CFG, anonymizer=anonymizer)
    finally:
        anonymizer.pseudonymizer = saved
    tag = clean[0].response.tool_calls[0].parsed_arguments()["to"]
    assert clean[0].messages[0].content == f"Mail {tag} now."
    token = keeping.encrypted_reverse_map()
    assert EMAIL.encode() not in token and EMAIL not in json.dumps(audit)
    assert decrypt_reverse_map(token, keeping.key) == {"r1": {tag: EMAIL}}
    with pytest.raises((InvalidToken, ValueError)):  # a malformed key is a ValueError, a wrong one InvalidToken
        decrypt_reverse_map(token, b"wrong key")


def test_processes_creating_the_key_at_once_all_read_the_same_whole_key(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from components.curate.pseudonyms import load_or_create_key

    cfg = PseudonymConfig(key_env="LLM2SLM_TEST_UNSET_KEY_VARIABLE", key_file=str(tmp_path / "cfg" / "pseudonym.key"))
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_or_create_key(cfg), range(32)))
    assert len(set(keys)) == 1 and len(keys[0]) == 64  # one key, whole (32 bytes in hex)
    assert [p.name for p in (tmp_path / "cfg").iterdir()] == ["pseudonym.key"]  # no draft left behind
    assert (tmp_path / "cfg" / "pseudonym.key").stat().st_mode & 0o777 == 0o600
