"""A labelled set for S2: generated texts with known injected PII (value, type and character span), plus
distractors that must stay (order numbers, dates, UUIDs, the word "SSN", "Bearer authentication").

Used by benchmarks/anonymization_quality.py and the leak test. Values are synthetic (Faker, seeded), in the real
formats: phones with valid area codes, Luhn-valid cards including Mastercard 2-series, SSNs in the issued ranges,
IBANs with valid check digits, IPv4/IPv6, API keys in vendor formats, names, street addresses, PHI ids.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

AREA_CODES = [
    "212",
    "415",
    "617",
    "312",
    "206",
    "303",
    "512",
    "404",
    "305",
    "718",
    "646",
    "202",
    "213",
    "702",
    "808",
    "919",
    "614",
    "971",
    "503",
    "720",
]


@dataclass
class LabelledText:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, entity type)

    def values(self) -> list[tuple[str, str]]:
        return [(self.text[start:end], entity) for start, end, entity in self.spans]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = [int(c) for c in body + check]
        total = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
        if total % 10 == 0:
            return body + check
    raise AssertionError("unreachable")


def _group(number: str, rng: random.Random) -> str:
    separator = rng.choice([" ", "-", ""])
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


class PiiFactory:
    def __init__(self, seed: int) -> None:
        from faker import Faker

        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.foreign = {locale: Faker(locale) for locale in ("de_DE", "fr_FR", "en_GB", "nl_NL", "es_ES")}
        for offset, faker in enumerate(self.foreign.values()):
            faker.seed_instance(seed + offset + 1)

    def person(self) -> str:
        return f"{self.fake.first_name()} {self.fake.last_name()}"

    def email(self) -> str:
        return self.fake.email()

    def phone(self) -> str:
        area, exchange, line = self.rng.choice(AREA_CODES), self.rng.randint(201, 989), self.rng.randint(0, 9999)
        return self.rng.choice(
            [
                f"({area}) {exchange}-{line:04d}",
                f"{area}-{exchange}-{line:04d}",
                f"+1 {area} {exchange} {line:04d}",
                f"{area}.{exchange}.{line:04d}",
            ]
        )

    def card(self) -> str:
        prefix = self.rng.choice(["4", "51", "55", "2221", "2300", "2720", "2499", "37", "6011"])
        length = 15 if prefix == "37" else 16
        return (
            _group(_luhn_complete(prefix, length, self.rng), self.rng)
            if length == 16
            else _luhn_complete(prefix, length, self.rng)
        )

    def ssn(self) -> str:
        area = self.rng.choice([n for n in range(1, 900) if n != 666])
        return f"{area:03d}-{self.rng.randint(1, 99):02d}-{self.rng.randint(1, 9999):04d}"

    def ip(self) -> str:
        return self.fake.ipv4_public() if self.rng.random() < 0.6 else self.fake.ipv6()

    def iban(self) -> str:
        return self.rng.choice(list(self.foreign.values())).iban()

    def secret(self) -> str:
        alphabet = string.ascii_letters + string.digits
        pick = lambda n, chars=alphabet: "".join(self.rng.choice(chars) for _ in range(n))  # noqa: E731
        return self.rng.choice(
            [
                f"sk-proj-{pick(48)}",
                f"AKIA{pick(16, string.ascii_uppercase + string.digits)}",
                f"ghp_{pick(36)}",
                f"xoxb-{pick(12, string.digits)}-{pick(24)}",
                pick(40),
            ]
        )

    def address(self) -> str:
        street = self.fake.street_address()
        if self.rng.random() < 0.5:
            return f"{street}, {self.fake.city()}, {self.fake.state_abbr()} {self.fake.zipcode()}"
        return street

    def mrn(self) -> str:
        return self.rng.choice(["", "MR", "A"]) + str(self.rng.randint(10**6, 10**8))

    def plan_id(self) -> str:
        return self.rng.choice(["XJH", "BCB", "W", "UHC"]) + str(self.rng.randint(10**8, 10**10))


# Each template: text with {slot} markers; the slot's generator and entity type come from SLOTS.
SLOTS = {
    "name": ("person", "PERSON"),
    "email": ("email", "EMAIL_ADDRESS"),
    "phone": ("phone", "PHONE_NUMBER"),
    "card": ("card", "CREDIT_CARD"),
    "ssn": ("ssn", "US_SSN"),
    "ip": ("ip", "IP_ADDRESS"),
    "iban": ("iban", "IBAN_CODE"),
    "secret": ("secret", "SECRET"),
    "address": ("address", "STREET_ADDRESS"),
    "mrn": ("mrn", "MEDICAL_RECORD_NUMBER"),
    "plan": ("plan_id", "HEALTH_PLAN_ID"),
}
TEMPLATES = [
    "Hi, this is {name}. Please update my contact email to {email} and my phone to {phone}.",
    "Charge the order to card {card} and ship it to {address}. The customer is {name}.",
    "{name} asked us to verify SSN {ssn} before opening the account; call back at {phone}.",
    "Our server at {ip} keeps rejecting the deploy. Use the key {secret} and notify {email}.",
    "Wire the refund to IBAN {iban} for {name}; the billing address on file is {address}.",
    "Patient {name}, MRN: {mrn}, member ID {plan}, needs a follow-up visit next week.",
    "Please send the contract to {name} at {address} and copy {email} on the thread.",
    "Login attempts from {ip} used the token {secret}; lock the account of {name} now.",
    "Medical record number {mrn} belongs to {name}; health plan ID: {plan}. Call {phone}.",
    "The card ending the chain was {card}; the holder {name} lives at {address}.",
    "Set the Authorization header to Bearer {secret} and retry the call for {email}.",
    "Transfer 250 EUR from IBAN {iban} and confirm by SMS to {phone} for {name}.",
]
DISTRACTORS = [
    "Order #A-20931 shipped on 2024-05-17 and costs $1,249.99 in total.",
    "Never log the SSN or the card number; ask for the SSN only when required.",
    "Bearer authentication is required; see request id 3f2b8c1e-9a7d-4c1e-8f2a-1b2c3d4e5f60.",
    "Version 3.12.4 of the library fixed issue 48213 in the parser.",
    "The meeting room on floor 4 holds 12 people from 9:30 to 11:00.",
    "Use the get_weather tool with units set to metric for the next 3 days.",
]


def build_labelled_set(n: int, seed: int = 7) -> list[LabelledText]:
    """n texts (~200-400 characters): a template with injected PII plus a filler sentence and a distractor."""
    factory = PiiFactory(seed)
    rng = factory.rng
    labelled: list[LabelledText] = []
    for index in range(n):
        template = TEMPLATES[index % len(TEMPLATES)]
        item = LabelledText(text="")
        pieces = [factory.fake.sentence(nb_words=rng.randint(6, 12)) + " "]
        for chunk in string.Formatter().parse(template):
            literal, slot = chunk[0], chunk[1]
            pieces.append(literal)
            if slot:
                generator, entity = SLOTS[slot]
                value = getattr(factory, generator)()
                start = sum(map(len, pieces))
                pieces.append(value)
                item.spans.append((start, start + len(value), entity))
        pieces.append(" " + rng.choice(DISTRACTORS))
        item.text = "".join(pieces)
        labelled.append(item)
    return labelled
