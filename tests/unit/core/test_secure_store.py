"""Encryption at rest: key sources, key file creation, wrong keys, encrypted records read transparently."""

import os
import stat

import pytest
from cryptography.fernet import Fernet

from components.core.schema import read_records, write_records
from components.core.secure_store import (
    EncryptedAppendLog,
    StoreKeyError,
    check_key_opens,
    decrypt_lines,
    load_key,
    read_maybe_encrypted,
    write_encrypted,
)


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "config" / "llm2slm" / "store.key"
    monkeypatch.delenv("LLM2SLM_STORE_KEY", raising=False)
    monkeypatch.setenv("LLM2SLM_STORE_KEY_FILE", str(path))
    return path


def test_key_file_is_created_once_private_and_reused(key_file):
    key = load_key()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert load_key() == key and Fernet(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644], ids=oct)
def test_a_key_file_group_or_others_may_read_is_refused(key_file, mode):
    key = load_key()
    os.chmod(key_file, mode)
    with pytest.raises(PermissionError, match=f"{key_file}.*chmod 600"):
        load_key()
    os.chmod(key_file, 0o600)
    assert load_key() == key


def test_environment_key_wins_over_the_file(key_file, monkeypatch):
    load_key()
    env_key = Fernet.generate_key()
    monkeypatch.setenv("LLM2SLM_STORE_KEY", env_key.decode())
    assert load_key() == env_key


def test_malformed_key_is_one_clear_error(key_file, monkeypatch):
    monkeypatch.setenv("LLM2SLM_STORE_KEY", "not-a-key")
    with pytest.raises(StoreKeyError, match="not a Fernet key"):
        load_key()


def test_records_file_is_encrypted_and_read_back_transparently(key_file, records, tmp_path, monkeypatch):
    path = write_records(records, tmp_path / "records.parquet", encrypt=True)
    data = path.read_bytes()
    assert data.startswith(b"gAAAAA") and b"PAR1" not in data
    assert records[0].user_request.encode() not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [r.model_dump() for r in read_records(path)] == [r.model_dump() for r in records]
    # A plain file (S2's anonymized output) is read as before.
    plain = write_records(records, tmp_path / "plain.parquet")
    assert plain.read_bytes().startswith(b"PAR1") and len(read_records(plain)) == len(records)

    monkeypatch.setenv("LLM2SLM_STORE_KEY", Fernet.generate_key().decode())
    with pytest.raises(StoreKeyError, match="wrong store key"):
        read_records(path)


def test_append_log_writes_one_token_per_line(key_file, tmp_path):
    log = EncryptedAppendLog(tmp_path / "store")
    for text in (b'{"a": "jane@example.com"}', b'{"b": 2}'):
        path = log.append("calls.jsonl", text)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and b"jane@example.com" not in path.read_bytes()
    assert list(decrypt_lines(iter(lines), "store")) == [b'{"a": "jane@example.com"}', b'{"b": 2}']
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = Fernet.generate_key()
    with pytest.raises(StoreKeyError, match="wrong store key"):
        list(decrypt_lines(iter(lines), "store", key=other))


def test_lines_that_do_not_decrypt_before_one_that_does_are_left_to_the_reader(key_file, tmp_path):
    good = EncryptedAppendLog(tmp_path / "store").append("calls.jsonl", b'{"b": 2}').read_bytes().strip()
    lines = [b"torn", b"gAAAAAB-altered", b"x", good]
    assert list(decrypt_lines(iter(lines), "store")) == [None, None, None, b'{"b": 2}']
    check_key_opens(iter(lines), "store")  # one line opens: the key is right
    with pytest.raises(StoreKeyError, match="wrong store key"):
        check_key_opens(iter(lines[:3]), "store")


def test_whole_file_round_trip_and_wrong_key(key_file, tmp_path):
    path = write_encrypted(b"secret bytes", tmp_path / "blob")
    assert read_maybe_encrypted(path) == b"secret bytes"
    with pytest.raises(StoreKeyError):
        read_maybe_encrypted(path, key=Fernet.generate_key())
