"""Leak test: S1 -> S2 as Prefect tasks (the real ones, under Prefect's test harness, with result persistence on
and the MLflow store in the work directory) on calls full of injected PII, then every file the run wrote is
scanned for every injected value: the work directory (data, reports, quarantine, mlflow.db, mlartifacts),
Prefect's home with its persisted results, Prefect's SQLite database (flow/task runs and their logs), and the
captured stdout/stderr. Parquet files are also scanned decoded, since compression can hide a string.

S3-S6 read only S2's output, so S1 -> S2 covers every place a raw value can first be written.
"""

import json
import random
import uuid
from pathlib import Path

import pytest
import yaml

from benchmarks.anonymization_data import PiiFactory
from components.core.config import load_params
from tests.support.leak_scan import scan

ROOT = Path(__file__).resolve().parents[2]
CUES = ["My name is {name}", "Hi, this is {name}", "Dear {name}"]
SEND = {
    "type": "function",
    "function": {
        "name": "update_contact",
        "description": "Update a customer. Escalations go to {support}.",
        "parameters": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string"},
                "phone": {"type": "string"},
                "last_name": {"type": "string"},
                "note": {"type": "string"},
            },
        },
    },
}


def leaky_calls(n: int, seed: int = 11) -> tuple[list[str], set[str]]:
    """n request/response lines with PII in the prompt, the tool schema and the call's argument values, one
    duplicate and one malformed line; and the set of injected values."""
    factory, rng = PiiFactory(seed), random.Random(seed)
    values: set[str] = set()
    lines = []
    for index in range(n):
        name, email, phone = factory.person(), factory.email(), factory.phone()
        extra = {
            "card": factory.card(),
            "ssn": factory.ssn(),
            "ip": factory.ip(),
            "iban": factory.iban(),
            "secret": factory.secret(),
            "address": factory.address(),
            "mrn": factory.mrn(),
        }
        support = factory.email()
        # Beside the prompt, where real logs carry personal data too: a metadata object (kept under
        # anonymize.metadata_keys, dropped otherwise), a session id holding the user's email, the participant's
        # name on the user message, an agent named after its user, and a tool result in the history.
        customer = {"name": factory.person(), "email": factory.email(), "phone": factory.phone()}
        dropped_note = f"VIP, call {factory.phone()}"
        session = f"web:{factory.email()}:{index}"
        participant = factory.person().replace(" ", "_").lower()
        agent = f"assistant-of-{factory.email()}"
        owner_name, owner_email = factory.person(), factory.email()
        side = {*customer.values(), dropped_note, session, participant, agent, owner_name, owner_email}
        values |= {name, email, phone, support, *extra.values(), *side}
        prompt = (
            f"{rng.choice(CUES).format(name=name)}. Please change my email to {email} and my phone to {phone}. "
            f"Card {extra['card']}, SSN {extra['ssn']}, login from {extra['ip']}, IBAN {extra['iban']}, "
            f"API key {extra['secret']}, I live at {extra['address']}, MRN: {extra['mrn']}."
        )
        tool = json.loads(json.dumps(SEND).replace("{support}", support))
        arguments = {"email": email, "phone": phone, "last_name": name.split()[-1], "note": f"IBAN {extra['iban']}"}
        lines.append(
            json.dumps(
                {
                    "id": f"call-{index:03d}",
                    "agent": agent,
                    "session_id": session,
                    "metadata": {"customer": customer, "crm_note": dropped_note},
                    "request": {
                        "model": "gpt-4o",
                        "tools": [tool],
                        "messages": [
                            {"role": "system", "content": "You update CRM contacts. Never repeat the SSN."},
                            {"role": "user", "content": "Whose account is this?", "name": participant},
                            {
                                "role": "assistant",
                                "tool_calls": [
                                    {
                                        "id": f"lookup{index}",
                                        "type": "function",
                                        "function": {
                                            "name": "update_contact",
                                            "arguments": json.dumps({"email": owner_email}),
                                        },
                                    }
                                ],
                            },
                            {
                                "role": "tool",
                                "tool_call_id": f"lookup{index}",
                                "content": f"The account belongs to {owner_name} ({owner_email}).",
                            },
                            {"role": "user", "content": prompt, "name": participant},
                        ],
                    },
                    "response": {
                        "choices": [
                            {
                                "message": {
                                    "role": "assistant",
                                    "tool_calls": [
                                        {
                                            "id": f"tc{index}",
                                            "type": "function",
                                            "function": {"name": "update_contact", "arguments": json.dumps(arguments)},
                                        }
                                    ],
                                }
                            }
                        ],
                        "usage": {"prompt_tokens": 120, "completion_tokens": 30},
                    },
                }
            )
        )
    lines.append(lines[0].replace('"call-000"', '"call-dup"'))  # removed by curation, listed by id only
    lines.append(f'{{"id": "broken", "request": "{sorted(values)[0]} {sorted(values)[1]}"')  # quarantined, never copied
    return lines, values


@pytest.fixture
def leak_run(tmp_path_factory):
    import prefect.settings as settings
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from flows.steps import load_pipeline_config
    from tasks.anonymize import anonymize_task
    from tasks.collect import collect_task
    from tasks.helpers.tracking import end_parent_run, start_parent_run

    base = tmp_path_factory.mktemp("leak")
    lines, values = leaky_calls(24)
    input_path = base / "input" / "calls.jsonl"  # the user's own file, outside the work directory
    input_path.parent.mkdir()
    input_path.write_text("\n".join(lines) + "\n")
    workdir, prefect_home = base / "work", base / "prefect-home"
    params = load_params(ROOT / "params.yaml")
    params["anonymize"]["metadata_keys"] = ["customer"]  # its values go through S2; the other key is dropped
    params_path = base / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))

    @flow(name="leak_s1_s2")
    def s1_s2(params_path: str, work: str, source: str) -> dict:
        config = load_pipeline_config(Path(params_path), f"leak-{uuid.uuid4().hex[:8]}")
        parent = start_parent_run(Path(work), config.tracking, "leak", {})
        collect_task(config.steps["collect"], Path(work), config.tracking, parent, Path(source))
        audit = anonymize_task(config.steps["anonymize"], Path(work), config.tracking, parent)
        end_parent_run(parent)
        return audit

    with prefect_test_harness(server_startup_timeout=180):
        with settings.temporary_settings(
            updates={
                settings.PREFECT_HOME: prefect_home,
                settings.PREFECT_LOCAL_STORAGE_PATH: prefect_home / "storage",
                settings.PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
            }
        ):
            audit = s1_s2(str(params_path), str(workdir), str(input_path))
        database = Path(settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
        # The harness's server writes its SQLite file while it runs: read it before the harness deletes it.
        database_files = {path.name: path.read_bytes() for path in database.parent.glob(database.name + "*")}
    copies = base / "prefect-db-copy"
    copies.mkdir()
    for name, content in database_files.items():
        (copies / name).write_bytes(content)
    return {"workdir": workdir, "prefect_home": prefect_home, "database": copies, "values": values, "audit": audit}


def test_no_injected_value_in_any_file_the_run_wrote(capfd, leak_run):
    # capfd comes first so that it also captures what the run printed and logged while the fixture ran.
    audit, values = leak_run["audit"], leak_run["values"]
    # S1's content hash already skips the exact duplicate line, so S2 receives 24 distinct calls.
    collected = json.loads((leak_run["workdir"] / "reports" / "collect.json").read_text())
    assert collected["duplicates_skipped"] == 1
    assert audit["records_in"] == 24 and audit["curation"]["removed_by_reason"] == {}
    for entity in (
        "PERSON",
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "US_SSN",
        "IP_ADDRESS",
        "IBAN_CODE",
        "SECRET",
        "STREET_ADDRESS",
        "MEDICAL_RECORD_NUMBER",
    ):
        assert audit["records_per_entity"].get(entity) == 24, entity
    assert (leak_run["workdir"] / "reports" / "anonymization.html").is_file()
    files = [
        path
        for root in (leak_run["workdir"], leak_run["prefect_home"], leak_run["database"])
        for path in root.rglob("*")
        if path.is_file()
    ]
    names = {path.name for path in files}
    assert {"mlflow.db", "records.parquet", "anonymization.json", "prefect-test.db"} <= names
    assert any("storage" in path.parts for path in files), "Prefect persisted no result"
    leaks = {str(path): found for path in files if (found := scan(path, values))}
    output = capfd.readouterr()
    found_in_output = sorted(v for v in values if v in output.out + output.err)
    if found_in_output:
        leaks["captured stdout/stderr"] = found_in_output
    assert not leaks, "raw values found in: " + ", ".join(f"{where} ({len(found)})" for where, found in leaks.items())
