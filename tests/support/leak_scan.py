"""Scanning what a run wrote for raw injected values: the one scanner for the leak tests (tests/flow/test_leak.py,
tests/e2e/test_run.py), and the values the demo data injects.

A file is scanned as text from its raw bytes and, for Parquet, also decoded (compression or dictionary encoding can
hide a string from a byte scan). Encrypted files (S1's records at rest) are scanned as bytes only: without the key
they cannot hold a readable raw value, and that is what the scan checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from components.collect.demo_parts import FAKE_CARDS, FAKE_PEOPLE

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
# The demo's phone shapes: "+1 415 555 0123", "(415) 555-0123", "415-555-0123" (555-01xx is reserved for fiction).
PHONE = re.compile(r"\+1 \d{3} 555 01\d\d|\(\d{3}\) 555-01\d\d|\b\d{3}-555-01\d\d\b")
SSN = re.compile(r"SSN (\d{3}-\d{2}-\d{4})")


def sqlite_texts(path: Path) -> list[str]:
    """Every text and blob of every table of an SQLite file (MLflow's and Prefect's stores), read through SQLite:
    a long value spills over pages, and a byte scan sees it cut in pieces."""
    import sqlite3

    texts: list[str] = []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        texts.append(value.decode("utf-8", errors="ignore"))
                    elif isinstance(value, str):
                        texts.append(value)
    except sqlite3.DatabaseError:
        return []  # a WAL or journal file beside the database: scanned as bytes only
    finally:
        connection.close()
    return ["\n".join(texts)]


def texts_of(path: Path) -> list[str]:
    raw = path.read_bytes().decode("utf-8", errors="ignore")
    texts = [raw]
    if raw.startswith("PAR1"):
        import pandas as pd

        decoded = pd.read_parquet(path).to_json(force_ascii=False).replace("\\/", "/")
        texts += [decoded, decoded.replace('\\"', '"')]
    if raw.startswith("SQLite format 3"):
        texts += sqlite_texts(path)
    return texts


def scan(path: Path, values: Iterable[str]) -> list[str]:
    """The injected values found in ``path`` (sorted)."""
    texts = texts_of(path)
    return sorted(value for value in set(values) if any(value in text for text in texts))


def scan_tree(roots: Iterable[Path], values: Iterable[str]) -> dict[str, list[str]]:
    """Every file under ``roots`` that holds an injected value, with the values found."""
    values = set(values)
    files = [path for root in roots for path in Path(root).rglob("*") if path.is_file()]
    return {str(path): found for path in files if (found := scan(path, values))}


def demo_injected_values(lines: Iterable[str]) -> dict[str, set[str]]:
    """Per entity type, the raw values the demo data put into these log lines (see components/collect/demo_data)."""
    found: dict[str, set[str]] = {"name": set(), "email": set(), "phone": set(), "ssn": set(), "card": set()}
    for line in lines:
        try:
            text = json.dumps(json.loads(line), ensure_ascii=False)  # unescaped, as a reader would see the values
        except json.JSONDecodeError:
            text = line  # a malformed line: quarantined, its values must not be copied either
        found["name"] |= {name for name in FAKE_PEOPLE if name in text}
        found["email"] |= set(EMAIL.findall(text))
        found["phone"] |= set(PHONE.findall(text))
        found["ssn"] |= set(SSN.findall(text))
        found["card"] |= {card for card in FAKE_CARDS if card in text}
    return found
