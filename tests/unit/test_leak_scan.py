"""The leak tests' scanner finds a raw value wherever a reader could: plain text and compressed Parquet; an
encrypted file does not hold it; and the demo data's injected values are listed for every entity type."""

from pathlib import Path

import pandas as pd

from components.collect.demo_data import DemoDataConfig, build_demo_calls
from components.core.schema import CallRecord, ChatMessage, write_records
from tests.support.leak_scan import demo_injected_values, scan, scan_tree

SSN = "123-45-6789"


def test_a_value_hidden_by_parquet_compression_is_found_and_an_encrypted_file_holds_none(tmp_path: Path) -> None:
    # Compressed pages without statistics or a dictionary: no plain copy of the value is left in the bytes.
    table = pd.DataFrame({"note": [f"call {i}: customer SSN {SSN} verified" for i in range(2000)]})
    parquet = tmp_path / "data.parquet"
    table.to_parquet(parquet, compression="zstd", use_dictionary=False, write_statistics=False)
    assert SSN.encode() not in parquet.read_bytes(), "the byte scan alone would miss it: the check needs the decode"
    assert scan(parquet, {SSN, "987-65-4321"}) == [SSN]

    (tmp_path / "log.txt").write_text(f"user said SSN {SSN}\n")
    record = CallRecord(
        record_id="r1",
        messages=[ChatMessage(role="user", content=f"My SSN is {SSN}")],
        response=ChatMessage(role="assistant", content="Noted."),
    )
    write_records([record], tmp_path / "encrypted" / "records.parquet", encrypt=True)
    assert scan_tree([tmp_path], {SSN}) == {str(parquet): [SSN], str(tmp_path / "log.txt"): [SSN]}


def test_every_entity_type_the_demo_injects_is_listed() -> None:
    lines = build_demo_calls(DemoDataConfig(kind="bfcl", max_records=60, malformed_lines=0, pii_share=1.0))
    values = demo_injected_values(lines)
    assert all(values[kind] for kind in ("name", "email", "phone", "ssn", "card")), values
    every = set().union(*values.values())
    assert all(any(value in line for line in lines) for value in every - values["name"])


def test_a_value_split_across_sqlite_overflow_pages_is_found(tmp_path: Path) -> None:
    """MLflow's and Prefect's stores are SQLite: a long text spills onto overflow pages, each opening with a
    pointer, so a value crossing a page boundary is not in the file's bytes; read through SQLite it is."""
    import sqlite3

    def store_with(extra: int) -> Path:
        # The value sits past the first page; the row's length moves where SQLite cuts its pages.
        database = tmp_path / f"store-{extra}.db"
        connection = sqlite3.connect(database)
        connection.execute("CREATE TABLE spans (content TEXT)")
        connection.execute("INSERT INTO spans VALUES (?)", ("x" * 5000 + f"SSN {SSN}" + "y" * (9000 + extra),))
        connection.commit()
        connection.close()
        return database

    cut = next(path for extra in range(0, 4096, 7) if SSN.encode() not in (path := store_with(extra)).read_bytes())
    assert scan(cut, {SSN, "987-65-4321"}) == [SSN]
