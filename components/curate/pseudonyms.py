"""What a detected value is replaced with: typed tags or realistic surrogates, per record or across the dataset.

- ``scope: record`` numbers tags per record in order of appearance (``<EMAIL_ADDRESS_1>``): no key is needed and
  two records share nothing.
- ``scope: dataset`` names a value by a keyed hash (HMAC-SHA256 with a secret key): the same customer is the same
  ``<PERSON_5f0c2a9e>`` in every record and in every run that uses the same key, and without the key the tag
  cannot be traced back (a plain hash of a name or a phone number can be brute-forced).
- ``style: surrogate`` (per entity type) writes a realistic fake value instead of a tag, drawn with Faker seeded by
  the same HMAC, so it is stable too. Types with no sensible fake (secrets, ids) always get tags.

The key comes from an environment variable or a key file outside the work directory, created on first use with
owner-only permissions. The reverse map (placeholder -> original) is never kept unless ``reverse_map`` is set; it
is then written encrypted with Fernet under a key derived from the same secret. Framework-free.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from components.core.config import StepConfig
from components.core.secure_store import read_private_key_file

KEY_BYTES = 32
_TAG_HASH_CHARS = 8
SURROGATE_ATTEMPTS = 20


class PseudonymConfig(StepConfig):
    scope: Literal["record", "dataset"] = "record"
    style: Literal["tag", "surrogate"] = "surrogate"
    # Per-type override of style, e.g. {PERSON: surrogate, EMAIL_ADDRESS: surrogate}.
    style_per_entity: dict[str, Literal["tag", "surrogate"]] = Field(default_factory=dict)
    key_env: str = "LLM2SLM_PSEUDONYM_KEY"
    key_file: str = "~/.config/llm2slm/pseudonym.key"
    # Where to write the encrypted reverse map; None (the default) keeps no way back to the originals.
    reverse_map: str | None = None
    surrogate_locale: str = "en_US"

    def style_for(self, entity_type: str) -> str:
        return self.style_per_entity.get(entity_type, self.style)


def load_or_create_key(cfg: PseudonymConfig) -> bytes:
    """The secret from ``key_env`` (hex or any text), else from ``key_file``, which is created (0600) if absent."""
    from_env = os.environ.get(cfg.key_env)
    if from_env:
        return from_env.encode()
    path = Path(cfg.key_file).expanduser()
    if not path.exists():
        # Several processes (S2's partitions, a worker) may create it at once: each writes a whole key beside it and
        # links it into place, which is atomic, so the first wins, every process reads that one, and none ever reads
        # a half-written key (a different secret would give the same value different surrogates).
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(KEY_BYTES))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process created it first: use that one
        finally:
            draft.unlink()
    return read_private_key_file(path, "pseudonym key file")


def _fernet(key: bytes) -> Any:
    from cryptography.fernet import Fernet

    derived = hmac.new(key, b"llm2slm reverse map", hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_reverse_map(reverse_map: dict[str, dict[str, str]], key: bytes) -> bytes:
    return _fernet(key).encrypt(json.dumps(reverse_map, ensure_ascii=False, sort_keys=True).encode())


def decrypt_reverse_map(token: bytes, key: bytes) -> dict[str, dict[str, str]]:
    return json.loads(_fernet(key).decrypt(token))


# Surrogates: kept clearly synthetic where the format allows (reserved example domains, 555-01xx phone numbers).
def _surrogate(fake: Any, entity_type: str, value: str) -> str | None:
    if entity_type == "PERSON":
        return f"{fake.first_name()} {fake.last_name()}" if " " in value.strip() else fake.first_name()
    if entity_type == "EMAIL_ADDRESS":
        return f"{fake.user_name()}@example.com"
    if entity_type == "PHONE_NUMBER":
        return fake.numerify("(%##) 555-01##")
    if entity_type == "CREDIT_CARD":
        return fake.credit_card_number()
    if entity_type == "US_SSN":
        return fake.ssn()
    if entity_type == "IBAN_CODE":
        return fake.iban()
    if entity_type == "IP_ADDRESS":
        return fake.ipv6() if ":" in value else fake.ipv4_private()
    if entity_type == "LOCATION":
        return fake.city()
    if entity_type == "STREET_ADDRESS":
        return fake.street_address()
    return None  # secrets and ids: a tag says more than a fake


class Pseudonymizer:
    """Hands out placeholders; one instance per run. :meth:`for_record` gives the mapping of one record."""

    def __init__(self, cfg: PseudonymConfig) -> None:
        self.cfg = cfg
        # Always keyed: besides surrogates and dataset tags, S2 replaces logged ids with keyed hashes (side_fields).
        self._key = load_or_create_key(cfg)
        self._fake: Any = None
        self.reverse_map: dict[str, dict[str, str]] = {}  # record id -> {placeholder: value}, only if configured
        # The raw input's text, casefolded: a surrogate found in it could be another record's real value.
        self._raw_text = ""

    def avoid_values_in(self, raw_texts: list[str]) -> None:
        """Never hand out a surrogate that occurs anywhere in these (raw) texts: a fake name drawn by chance could
        be a real customer of another record, and training on it would reproduce that person."""
        self._raw_text = "\n".join(raw_texts).casefold()

    @property
    def key(self) -> bytes:
        return self._key

    def digest(self, entity_type: str, value: str) -> bytes:
        return hmac.new(self._key, f"{entity_type}\x00{value}".encode(), hashlib.sha256).digest()

    def keyed_id(self, kind: str, value: str) -> str:
        """A logged id (record, conversation, participant...) as a stable keyed hash: equal ids stay equal."""
        digest = hmac.new(self._key, b"id\x00" + value.encode(), hashlib.sha256).hexdigest()
        return f"{kind}-{digest[:16]}"

    def surrogate(self, entity_type: str, value: str) -> str | None:
        if self._fake is None:
            from faker import Faker

            self._fake = Faker(self.cfg.surrogate_locale)
        seed = int.from_bytes(self.digest(entity_type, value)[:8], "big")
        for attempt in range(SURROGATE_ATTEMPTS):
            self._fake.seed_instance(seed + attempt)  # stable: the same value walks the same draws
            fake = _surrogate(self._fake, entity_type, value)
            if fake is None or fake.casefold() not in self._raw_text:
                return fake
        return None  # every draw is in the raw input: a tag it is

    def for_record(self, record_id: str) -> RecordPseudonyms:
        reverse = None
        if self.cfg.reverse_map is not None:
            reverse = self.reverse_map.setdefault(record_id, {})
        return RecordPseudonyms(self, reverse)

    def encrypted_reverse_map(self) -> bytes:
        return encrypt_reverse_map(self.reverse_map, self._key)


def _normal_form(entity_type: str, value: str) -> str:
    return value.lower() if entity_type == "EMAIL_ADDRESS" else value  # emails ignore case


class RecordPseudonyms:
    """The mapping of one record: (type, original value) -> placeholder, plus how many occurrences of each type
    were replaced. The same value always gets the same placeholder here, even when tagged as another type, which
    keeps prompt and expected tool call consistent."""

    def __init__(self, pseudonymizer: Pseudonymizer, reverse: dict[str, str] | None = None) -> None:
        self._owner = pseudonymizer
        self.placeholders: dict[tuple[str, str], str] = {}
        self._next_number: Counter[str] = Counter()
        self._used: set[str] = set()
        self._reverse = reverse
        self.replaced: Counter[str] = Counter()

    def placeholder_for(self, entity_type: str, value: str) -> str:
        key = (entity_type, _normal_form(entity_type, value))
        if key not in self.placeholders:
            # The same text under another type (a place in the prompt that NER calls a person in the arguments)
            # or in another case ("emma johnson" typed, "Emma Johnson" in the call) keeps its placeholder.
            same_text = next(
                (
                    placeholder
                    for (_, known), placeholder in self.placeholders.items()
                    if known.casefold() == key[1].casefold()
                ),
                None,
            )
            if same_text is not None:
                self.placeholders[key] = same_text
                return same_text
            placeholder = self._new_placeholder(entity_type, key[1])
            self.placeholders[key] = placeholder
            if self._reverse is not None:
                self._reverse[placeholder] = value
            if entity_type == "PERSON":
                self._map_name_parts(value, placeholder)
        return self.placeholders[key]

    def _new_placeholder(self, entity_type: str, value: str) -> str:
        cfg = self._owner.cfg
        if cfg.style_for(entity_type) == "surrogate":
            fake = self._owner.surrogate(entity_type, value)
            if fake is not None and fake not in self._used and fake != value:
                self._used.add(fake)
                return fake
        if cfg.scope == "dataset":
            tag = self._owner.digest(entity_type, value).hex()[:_TAG_HASH_CHARS]
            return f"<{entity_type}_{tag}>"
        self._next_number[entity_type] += 1
        return f"<{entity_type}_{self._next_number[entity_type]}>"

    def _map_name_parts(self, value: str, placeholder: str) -> None:
        """Arguments often split a name ({"first_name": "Emma"}) and NER misses a bare first name: the parts get
        the full name's tag, or, for a surrogate with as many parts, the surrogate's matching part."""
        parts = value.split()
        replacement_parts = placeholder.split()
        pairwise = len(parts) == len(replacement_parts) > 1
        for index, part in enumerate(parts):
            if len(part) >= 3 and part[0].isupper():
                self.placeholders.setdefault(("PERSON", part), replacement_parts[index] if pairwise else placeholder)
