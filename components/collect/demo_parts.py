"""The demo logs' shared pieces: the demo_data: config, the fixed log window, the synthetic people and PII, BFCL's
files and tools in OpenAI's form, token estimates, stable ids and the malformed lines. Both demo logs build on
them (demo_data.py: single BFCL calls, and the dispatch; demo_agent.py: the multi-turn agent), so neither imports
the other's privates and the two form no import circle.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from components.core.config import StepConfig
from components.scoring.tool_calls import json_schema_form

CHARS_PER_TOKEN = 4


# A fixed end of the log, not "now": the same seed must give the same file (DVC caches on it).
LOG_END = datetime(2026, 3, 23, 9, 0, tzinfo=UTC)


LOG_DAYS = 7


FAKE_PEOPLE = [
    "Maria Lopez",
    "Priya Raman",
    "Jonas Becker",
    "Aisha Okafor",
    "Tomasz Nowak",
    "Hiroshi Tanaka",
    "Elena Petrova",
    "Samuel Adeyemi",
    "Claire Dubois",
    "Rafael Moreno",
    "Ingrid Johansson",
    "Kevin O'Brien",
]


# Luhn-valid test card numbers, so a card recognizer that checks the checksum still fires.
FAKE_CARDS = ["4111 1111 1111 1111", "5555 5555 5555 4444", "4012 8888 8888 1881"]


PII_TEMPLATES = [
    ("prefix", "I'm {name}, reach me at {email}. "),
    ("prefix", "Hi, this is {name} ({phone}). "),
    ("suffix", " My name is {name} and my phone number is {phone}."),
    ("suffix", " Please send the results to {name} at {email}."),
    ("suffix", " For verification: {name}, SSN {ssn}."),
    ("suffix", " Charge it to my card {card}, name on card {name}."),
]


class DemoDataConfig(StepConfig):
    # 'agent': BFCL's multi-turn conversations run as a tool-using agent (demo_agent.py); 'bfcl': single BFCL
    # questions, one call each (this module).
    kind: Literal["agent", "bfcl"] = "agent"
    output: str = "data/raw/calls.jsonl"
    # The source's known task of each call (for the S3 quality benchmark), kept out of the log itself.
    known_groups: str | None = "data/raw/known_groups.jsonl"
    # kind 'bfcl':
    categories: list[str] = ["simple_python", "multiple", "parallel"]
    max_records: int = Field(300, gt=0)
    # kind 'agent': how many of BFCL's 200 multi-turn conversations (each ~9 calls), and how they are logged.
    conversations: int = Field(120, gt=0)
    chat_form_share: float = Field(0.3, ge=0.0, le=1.0)  # one multi-turn chat line; the rest one line per call
    truncated_share: float = Field(0.1, ge=0.0, le=1.0)  # of the chat lines: logged up to a tool result
    # Both kinds:
    pii_share: float = Field(0.25, ge=0.0, le=1.0)
    malformed_lines: int = Field(4, ge=0)
    llm_model: str = "gpt-4o"
    seed: int = 42


def openai_function_name(name: str) -> str:
    """BFCL names like ``math.factorial`` break OpenAI's ``^[a-zA-Z0-9_-]+$``; dots become underscores."""
    return name.replace(".", "_")


def openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": openai_function_name(function["name"]),
            "description": function.get("description", ""),
            "parameters": json_schema_form(function.get("parameters") or {"type": "dict", "properties": {}}),
        },
    }


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fake_person(rng: random.Random) -> dict[str, str]:
    name = rng.choice(FAKE_PEOPLE)
    first, last = name.lower().replace("'", "").split(" ", 1)
    area = rng.choice(["415", "212", "312", "617"])
    line = f"01{rng.randint(0, 99):02d}"  # 555-0100..0199 is reserved for fiction
    phone = rng.choice([f"+1 {area} 555 {line}", f"({area}) 555-{line}", f"{area}-555-{line}"])
    # SSN-like: no 000/666/9xx area and no 0000 serial, the shapes a real SSN recognizer accepts.
    ssn = f"{rng.randint(101, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1001, 9999):04d}"
    return {
        "name": name,
        "email": f"{first}.{last}@example.com",
        "phone": phone,
        "ssn": ssn,
        "card": rng.choice(FAKE_CARDS),
    }


def with_pii(prompt: str, rng: random.Random) -> str:
    """The prompt with one natural sentence about a fake person before or after it."""
    position, template = rng.choice(PII_TEMPLATES)
    sentence = template.format(**fake_person(rng))
    return sentence + prompt if position == "prefix" else prompt.rstrip() + sentence


def stable_hex(*parts: Any, length: int = 24) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:length]


def estimated_tokens(obj: Any) -> int:
    return max(1, math.ceil(len(json.dumps(obj)) / CHARS_PER_TOKEN))


def malformed_line(kind: int, good_line: str) -> str:
    """One broken line of a few realistic kinds; every kind is one non-blank line that S1 must quarantine."""
    good = json.loads(good_line)
    kinds = [
        lambda: good_line[: max(1, len(good_line) // 2)],  # truncated write
        lambda: json.dumps({k: v for k, v in good.items() if k != "response"}),  # response never logged
        lambda: json.dumps([good]),  # a batch as an array
        lambda: json.dumps({"messages": "user: what is the weather in Paris?", "tools": []}),  # flattened chat
        lambda: "2026-03-20T10:14:03Z ERROR upstream timeout after 30000 ms",  # a stray log line
    ]
    return kinds[kind % len(kinds)]()


def time_ordered(lines: list[str]) -> list[str]:
    stamped = [(index, json.loads(line).get("timestamp")) for index, line in enumerate(lines)]
    slots = [index for index, stamp in stamped if stamp]
    in_time_order = sorted(slots, key=lambda index: stamped[index][1])
    ordered = list(lines)
    for slot, source in zip(slots, in_time_order):
        ordered[slot] = lines[source]
    return ordered
