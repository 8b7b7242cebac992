"""Presidio recognizers for what its built-in set misses or handles slowly.

Street addresses, API keys and other secrets (including random-looking high-entropy strings), Mastercard's
2-series, PHI (medical record numbers, health-plan ids), "Firstname Lastname" with a first name Faker knows
(spaCy's small model misses many names mid-sentence), a North American phone pattern for numbers that
libphonenumber rejects, deny lists from params, and a phone recognizer that skips texts with too few digits to
hold a number (Presidio's runs libphonenumber's matcher once per region over every text: most of the pattern
time). Presidio compiles every pattern with the ``regex`` module, case-insensitively: ``(?-i:...)`` keeps
prefixes and capitalization exact, and lookbehinds may have any length. Framework-free; Presidio is imported
only when :func:`build_recognizers` runs.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections import Counter
from typing import Any

# Entity types added here, beside Presidio's own.
STREET_ADDRESS = "STREET_ADDRESS"
SECRET = "SECRET"
MEDICAL_RECORD_NUMBER = "MEDICAL_RECORD_NUMBER"
HEALTH_PLAN_ID = "HEALTH_PLAN_ID"

_SECRET_SCORE = 0.9  # these patterns are specific enough that a match is a secret without any context word
SECRET_PATTERNS = {
    "openai_api_key": r"(?<![\w-])(?-i:sk-[A-Za-z0-9_-]{20,})",
    "aws_access_key_id": r"(?<![A-Za-z0-9])(?-i:(?:AKIA|ASIA)[0-9A-Z]{16})(?![A-Za-z0-9])",
    "github_token": r"(?<![\w])(?-i:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    "slack_token": r"(?<![\w])(?-i:xox[abposr]-[A-Za-z0-9-]{10,})",
    "google_api_key": r"(?<![\w])(?-i:AIza[0-9A-Za-z_-]{35})",
    # Only the token after "Bearer", and only one with a digit in it, so prose such as "Bearer authentication"
    # stays readable.
    "bearer_token": r"(?<=\bBearer\s+)(?=[A-Za-z0-9._~+/-]*\d)[A-Za-z0-9._~+/-]{8,}=*",
    "pem_private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    # key=value / "password": "..." assignments: the value only.
    "assigned_secret": r"(?<=\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|client[_-]?secret)"
    r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]{6,}",
}
# Mastercard's 2-series (2221-2720), which Presidio's card pattern predates; Luhn-checked like Presidio's own.
MASTERCARD_2_SERIES = r"(?<!\d)(?:222[1-9]|22[3-9]\d|2[3-6]\d{2}|27[01]\d|2720)(?:[- ]?\d{4}){3}(?!\d)"
# North American numbers: area code and exchange start 2-9, the area code is not an N11 service code; the last
# four digits must be set apart so that long ids and amounts do not match.
NANP_PHONE = (
    r"(?<![\w+-])(?:\+?1[\s.-]?)?(?:\([2-9](?!11)\d{2}\)|[2-9](?!11)\d{2})[\s.-]?[2-9]\d{2}[\s.-]\d{4}(?![\w-])"
)
_STREET_SUFFIXES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|Parkway|Pkwy|"
    "Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl|Alley|Loop|Crossing|Xing|Plaza|Ridge|Run|Pike|Row|Path|Park|"
    "Point|Pt|Heights|Hts|Gardens|Grove|Hill|Hills|View|Walk|Center|Ctr|Crescent|Close|Mews"
)
_UNIT = r"(?:,?\s+(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Floor|Fl\.?|Room|Rm\.?|#)\s*#?[\w-]{1,6})"


def street_suffixes() -> str:
    """USPS street suffixes (Faker's en_US list of all ~225, plurals included, when Faker is installed), longest
    first so that "Streets" is not cut to "Street"."""
    try:
        from faker.providers.address.en_US import Provider

        names = set(Provider.street_suffixes) | set(_STREET_SUFFIXES.split("|"))
    except ImportError:  # pragma: no cover - Faker is a dependency; the short list still covers the common ones
        names = set(_STREET_SUFFIXES.split("|"))
    return "|".join(sorted(names, key=lambda name: (-len(name), name)))


def street_address_pattern() -> str:
    """ "1600 Amphitheatre Parkway", "742 Evergreen Terrace, Apt. 2B", "55 W 3rd St, Springfield, IL 62704": a
    house number, up to three capitalized name words, a street suffix, then an optional unit and city/state/zip."""
    return (
        r"(?-i:(?<![\w-])\d{1,6}[A-Z]?\s+(?:(?:[NSEW]|North|South|East|West)\.?\s+)?"
        r"(?:[A-Z][a-z']+|\d{1,3}(?:st|nd|rd|th))(?:\s+[A-Z][a-z']+){0,3}?\s+(?:" + street_suffixes() + r")\.?"
        r"(?:\s+(?:[NSEW]{1,2}|North|South|East|West)\.?)?(?![\w])" + _UNIT + r"?"
        r"(?:,\s*[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2}(?:,?\s+[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?)?)"
    )


# "P.O. Box 1234"
PO_BOX_PATTERN = r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b"
MRN_PATTERNS = {
    "mrn_after_label": r"(?<=\b(?:MRN|medical record(?:\s+(?:number|no\.?|num|#))?|patient\s+(?:id|number|no\.?)"
    r"|chart\s+(?:number|no\.?|#))\s*[:#]?\s*)(?-i:[A-Z]{0,3}-?\d{5,10})\b",
}
HEALTH_PLAN_PATTERNS = {
    "plan_id_after_label": r"(?<=\b(?:member\s+(?:id|number|no\.?)|subscriber\s+(?:id|number)|policy\s+(?:number|no\.?|#|id)"
    r"|health\s+plan\s+(?:id|number|no\.?)|insurance\s+(?:id|number|no\.?)"
    r"|group\s+(?:number|no\.?)|medicaid\s+(?:id|number))\s*[:#]?\s*)"
    r"(?-i:[A-Z]{0,4}-?\d[A-Z0-9-]{5,15})\b",
    # Medicare Beneficiary Identifier: 11 characters, letters drawn from a set without S L O I B Z.
    "medicare_mbi": r"(?<![\w-])(?-i:[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d-?[AC-HJKMNP-RT-Y]"
    r"[AC-HJKMNP-RT-Y0-9]\d-?[AC-HJKMNP-RT-Y]{2}\d{2})(?![\w-])",
}
# Two or three capitalized words after an introduction or a salutation: the small NER model misses some names
# ("Hi, this is Paige Reed") that these cues settle.
NAME_AFTER_CUE = (
    r"(?<=\b(?:my name is|this is|I am|I'm|name:|dear|patient|customer|client|holder|signed,?|regards,?"
    r"|mr\.?|mrs\.?|ms\.?|dr\.?)\s+)(?-i:[A-Z][a-z]+(?:[ -][A-Z][a-z'-]+){1,2})\b"
)
# A first name followed by a capitalized surname ("send it to Elena Petrova at ..."): spaCy's small model misses
# many such names mid-sentence. The first name must be one Faker knows (its person providers of many locales).
_FIRST_LAST = re.compile(r"\b([A-Z][a-z]{1,15})[ ]((?:O'|Mc|Mac)?[A-Z][a-z]{2,20}(?:-[A-Z][a-z]{2,20})?)\b")
_FAKER_LOCALES = (
    "en_US en_GB en_IN en_PH de_DE fr_FR es_ES es_MX it_IT pt_BR pl_PL nl_NL sv_SE da_DK fi_FI no_NO cs_CZ ro_RO "
    "hu_HU tr_TR uk_UA ru_RU hr_HR sk_SK sl_SI lt_LT lv_LV et_EE yo_NG tw_GH"
).split()


@functools.cache
def known_first_names() -> frozenset[str]:
    """Latin-script first names from Faker's person providers, loaded once per process."""
    names: set[str] = set()
    for locale in _FAKER_LOCALES:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except (ImportError, AttributeError):
            continue
        for attribute in ("first_names", "first_names_female", "first_names_male"):
            listed = getattr(provider, attribute, ())
            names.update(n for n in listed if isinstance(n, str) and n.isascii() and n.isalpha())
    return frozenset(names)


def first_last_names(text: str) -> list[tuple[int, int]]:
    """Spans of "Firstname Lastname" where the first name is a known one."""
    first_names = known_first_names()
    return [(m.start(), m.end()) for m in _FIRST_LAST.finditer(text) if m.group(1) in first_names]


_PHONE_DIGITS = re.compile(r"\d(?:[\s().+-]{0,3}\d){6}")  # seven digits close together: the least a phone has
_NANP = re.compile(NANP_PHONE)
_CANDIDATE_TOKEN = re.compile(r"(?<![\w/+=-])[A-Za-z0-9+/_=-]{20,}(?![\w/+=-])")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def luhn_valid(number: str) -> bool:
    digits = [int(char) for char in number if char.isdigit()]
    checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return len(digits) >= 12 and checksum % 10 == 0


def bits_per_char(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(token: str, min_length: int, min_bits_per_char: float) -> bool:
    """A token that reads like a key rather than a word or an identifier: long, mixing letters and digits (or
    cases), with character entropy near that of random base64/hex. UUIDs are ids, not secrets."""
    if len(token) < min_length or _UUID.match(token):
        return False
    classes = sum([any(c.islower() for c in token), any(c.isupper() for c in token), any(c.isdigit() for c in token)])
    digits = sum(c.isdigit() for c in token)
    if classes < 2 or digits < 2 or "__" in token:
        return False
    # Hex has at most 4 bits per char: a 32+ char hex string (a hash or a key) is judged against a lower bar.
    bar = min(min_bits_per_char, 3.0) if re.fullmatch(r"[0-9a-fA-F]{32,}", token) else min_bits_per_char
    return bits_per_char(token) >= bar


def build_recognizers(
    language: str,
    *,
    phone_regions: list[str],
    deny_list: dict[str, list[str]],
    secret_min_length: int,
    secret_min_bits_per_char: float,
) -> tuple[list[Any], list[str]]:
    """Recognizers to add to Presidio's registry, and the names of built-in ones they replace."""
    from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class LuhnCardRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return luhn_valid(pattern_text)

    class DigitGatedPhoneRecognizer(PhoneRecognizer):
        """Presidio's phone recognizer, run only on texts with seven digits close together that are not already
        a North American number (the NANP recognizer reports those; blanking keeps the offsets)."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            rest = _NANP.sub(lambda match: " " * len(match.group()), text)
            return super().analyze(rest, entities, nlp_artifacts) if _PHONE_DIGITS.search(rest) else []

    class HighEntropyRecognizer(EntityRecognizer):
        """Long random-looking tokens (keys, tokens, passwords) that no vendor prefix announces."""

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [
                RecognizerResult(SECRET, m.start(), m.end(), 0.6)
                for m in _CANDIDATE_TOKEN.finditer(text)
                if looks_random(m.group(), secret_min_length, secret_min_bits_per_char)
            ]

    class KnownFirstNameRecognizer(EntityRecognizer):
        """A known first name and a capitalized surname (see :func:`first_last_names`)."""

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [RecognizerResult("PERSON", start, end, 0.6) for start, end in first_last_names(text)]

    def patterns(entity: str, name: str, regexes: dict[str, str], score: float, **extra: Any) -> Any:
        return PatternRecognizer(
            supported_entity=entity,
            name=name,
            supported_language=language,
            patterns=[Pattern(key, regex, score) for key, regex in regexes.items()],
            **extra,
        )

    recognizers = [
        patterns(SECRET, "SecretRecognizer", SECRET_PATTERNS, _SECRET_SCORE),
        HighEntropyRecognizer(
            supported_entities=[SECRET], name="HighEntropySecretRecognizer", supported_language=language
        ),
        LuhnCardRecognizer(
            supported_entity="CREDIT_CARD",
            name="Mastercard2SeriesRecognizer",
            supported_language=language,
            patterns=[Pattern("mastercard_2_series", MASTERCARD_2_SERIES, 0.3)],  # Luhn raises it
            context=["card", "credit", "mastercard", "payment"],
        ),
        DigitGatedPhoneRecognizer(
            supported_language=language, supported_regions=tuple(phone_regions), name="DigitGatedPhoneRecognizer"
        ),
        patterns(
            "PHONE_NUMBER", "NanpPhoneRecognizer", {"nanp": NANP_PHONE}, 0.4, context=list(PhoneRecognizer.CONTEXT)
        ),
        patterns(
            STREET_ADDRESS,
            "StreetAddressRecognizer",
            {"street": street_address_pattern(), "po_box": PO_BOX_PATTERN},
            0.65,
            context=["address", "street", "live", "ship", "deliver", "mail"],
        ),
        patterns("PERSON", "NameAfterCueRecognizer", {"name_after_cue": NAME_AFTER_CUE}, 0.6),
        KnownFirstNameRecognizer(
            supported_entities=["PERSON"], name="KnownFirstNameRecognizer", supported_language=language
        ),
        patterns(MEDICAL_RECORD_NUMBER, "MedicalRecordNumberRecognizer", MRN_PATTERNS, 0.85),
        patterns(HEALTH_PLAN_ID, "HealthPlanIdRecognizer", HEALTH_PLAN_PATTERNS, 0.7),
    ]
    for entity, words in deny_list.items():
        if words:
            recognizers.append(
                PatternRecognizer(
                    supported_entity=entity,
                    name=f"DenyList_{entity}",
                    supported_language=language,
                    deny_list=list(words),
                    deny_list_score=1.0,
                )
            )
    return recognizers, ["PhoneRecognizer"]
