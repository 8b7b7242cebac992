"""The demo agent log of components/collect/demo_data.py, built from the real BFCL data (a small pinned wheel)."""

import json
import re

import pytest

from components.collect.demo_data import (
    DemoDataConfig,
    build_demo_calls,
    build_demo_log,
    known_group,
    write_demo_calls,
)
from components.collect.demo_parts import FAKE_PEOPLE
from components.collect.ingest import CollectConfig, collect_lines
from components.core.assets import asset_path
from components.scoring.tool_calls import json_schema_form

OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
CFG = DemoDataConfig(kind="bfcl", max_records=120, pii_share=0.3, malformed_lines=5, seed=7)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return build_demo_calls(CFG)


def parse(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def is_well_formed(obj) -> bool:
    if not isinstance(obj, dict):
        return False
    if "request" in obj:
        return isinstance(obj.get("response"), dict) and isinstance(obj["request"].get("messages"), list)
    return isinstance(obj.get("messages"), list)


def conversations(lines):
    """(messages, tools, tool_calls) of every well-formed line, in either form."""
    for obj in map(parse, lines):
        if not is_well_formed(obj):
            continue
        if "request" in obj:
            yield (
                obj["request"]["messages"],
                obj["request"]["tools"],
                obj["response"]["choices"][0]["message"]["tool_calls"],
            )
        else:
            yield obj["messages"][:-1], obj["tools"], obj["messages"][-1]["tool_calls"]


def test_config_takes_exactly_the_params_section():
    from pathlib import Path

    from components.core.config import load_params

    section = load_params(Path(__file__).resolve().parents[3] / "params.yaml")["demo_data"]
    assert set(DemoDataConfig.model_validate(section).model_dump()) == set(section)


def test_exactly_the_configured_number_of_lines_is_malformed(lines):
    assert len(lines) == CFG.max_records + CFG.malformed_lines
    assert sum(not is_well_formed(parse(line)) for line in lines) == CFG.malformed_lines
    assert all(line.strip() and "\n" not in line for line in lines)


def test_s1_reads_every_good_line_and_quarantines_every_broken_one(lines):
    result = collect_lines(lines, CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}}))
    assert len(result.records) == CFG.max_records and len(result.quarantine) == CFG.malformed_lines
    assert all(r.output_kind == "tool_call" and r.agent for r in result.records)
    sources = {r.source for r in result.records}
    assert sources == {"request_response", "chat_messages"}
    priced = [r for r in result.records if r.source == "request_response"]
    assert all(r.cost_usd and r.cost_usd > 0 and r.latency_ms and r.timestamp for r in priced)


def test_request_response_lines_have_the_proxy_shape(lines):
    objs = [o for o in map(parse, lines) if is_well_formed(o) and "request" in o]
    assert len(objs) >= 0.8 * CFG.max_records
    for obj in objs:
        assert obj["agent"] == "bfcl-assistant" and obj["request"]["model"] == CFG.llm_model
        choice = obj["response"]["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        usage = obj["response"]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert 50 < obj["latency_ms"] < 20_000
    median = sorted(o["latency_ms"] for o in objs)[len(objs) // 2]
    assert 400 < median < 1600


def walk_types(schema):
    if isinstance(schema, dict):
        if isinstance(schema.get("type"), str):
            yield schema["type"]
        for key, value in schema.items():
            if key == "properties":
                for sub in value.values():
                    yield from walk_types(sub)
            elif key in ("items", "additionalProperties"):
                yield from walk_types(value)


def test_tool_schemas_are_json_schema_and_names_are_valid(lines):
    for _, tools, tool_calls in conversations(lines):
        names = set()
        for tool in tools:
            assert tool["type"] == "function" and OPENAI_NAME.match(tool["function"]["name"])
            parameters = tool["function"]["parameters"]
            assert parameters["type"] == "object"
            assert set(walk_types(parameters)) <= {"object", "string", "integer", "number", "array", "boolean"}
            assert '"dict"' not in json.dumps(parameters)
            names.add(tool["function"]["name"])
        assert tool_calls and {c["function"]["name"] for c in tool_calls} <= names


def test_schema_conversion_keeps_a_property_named_type():
    schema = {
        "type": "dict",
        "properties": {
            "type": {"type": "string"},
            "point": {"type": "tuple", "items": {"type": "float"}},
            "data": {"type": "any"},
        },
    }
    assert json_schema_form(schema) == {
        "type": "object",
        "properties": {"type": {"type": "string"}, "point": {"type": "array", "items": {"type": "number"}}, "data": {}},
    }


def bfcl_items():
    data = asset_path("bfcl-eval")
    items = []
    for category in CFG.categories:
        name = f"BFCL_v4_{category}.json"
        answers = {a["id"]: a["ground_truth"] for a in map(json.loads, (data / "possible_answer" / name).open())}
        items += [
            (q["question"][0][-1]["content"], {f["name"].replace(".", "_") for f in q["function"]}, answers[q["id"]])
            for q in map(json.loads, (data / name).open())
        ]
    return items


def acceptable(value, options) -> bool:
    """BFCL-style: the value is one of the options ("" marks an optional argument, never a value)."""
    return any(option != "" and matches_option(value, option) for option in options)


def matches_option(value, option) -> bool:
    # Nested objects in BFCL answers are {key: [options]}, checked key by key; lists element by element.
    if isinstance(option, dict) and isinstance(value, dict):
        return all(acceptable(v, option.get(k, [])) for k, v in value.items())
    if isinstance(option, list) and isinstance(value, list):
        return len(option) == len(value) and all(matches_option(v, o) for v, o in zip(value, option))
    return value == option


def test_tool_call_arguments_are_json_matching_the_bfcl_ground_truth(lines):
    items = bfcl_items()
    for messages, tools, tool_calls in conversations(lines):
        prompt = messages[-1]["content"]
        tool_names = {t["function"]["name"] for t in tools}
        matches = [gt for question, names, gt in items if question in prompt and names == tool_names]
        assert matches, prompt[:80]
        truths = [(name.replace(".", "_"), args) for entry in matches[0] for name, args in entry.items()]
        assert len(tool_calls) == len(truths)
        for tool_call in tool_calls:
            arguments = json.loads(tool_call["function"]["arguments"])
            assert isinstance(arguments, dict)
            assert any(
                name == tool_call["function"]["name"]
                and set(arguments) <= set(args)
                and all(acceptable(v, args[k]) for k, v in arguments.items())
                # every argument that BFCL requires (no "" option) is present
                and all(k in arguments for k, opts in args.items() if "" not in opts)
                for name, args in truths
            )


def test_about_pii_share_of_prompts_carry_a_fake_person(lines):
    prompts = [messages[-1]["content"] for messages, _, _ in conversations(lines)]
    with_pii = [p for p in prompts if "@example.com" in p or any(name in p for name in FAKE_PEOPLE)]
    assert abs(len(with_pii) / len(prompts) - CFG.pii_share) <= 0.05
    assert any(re.search(r"\d{3}-\d{2}-\d{4}", p) for p in with_pii)


def test_same_seed_same_lines_other_seed_other_lines(lines, tmp_path):
    assert build_demo_calls(CFG) == lines
    assert build_demo_calls(CFG.model_copy(update={"seed": 8})) != lines
    path = write_demo_calls(CFG, tmp_path / "raw" / "calls.jsonl")
    assert path.read_text().splitlines() == lines


def test_categories_are_sampled_in_proportion(lines):
    counts = {"simple_python": 0, "multiple": 0, "parallel": 0}
    for _, tools, tool_calls in conversations(lines):
        kind = "parallel" if len(tool_calls) > 1 else "multiple" if len(tools) > 1 else "simple_python"
        counts[kind] += 1
    # BFCL sizes 400 / 200 / 200: half simple, a quarter each of the others (parallel items with one call aside).
    assert counts["simple_python"] >= 0.4 * CFG.max_records
    assert counts["multiple"] >= 0.15 * CFG.max_records and counts["parallel"] >= 0.15 * CFG.max_records


def test_known_groups_are_kept_aside_and_name_every_collected_record(tmp_path):
    cfg = DemoDataConfig(
        kind="bfcl", categories=["live_multiple", "multiple"], max_records=80, malformed_lines=2, seed=3
    )
    path = write_demo_calls(cfg, tmp_path / "calls.jsonl", known_groups_path=tmp_path / "groups.jsonl")
    groups = [json.loads(line) for line in (tmp_path / "groups.jsonl").read_text().splitlines()]
    records = collect_lines(path.read_text().splitlines(), CollectConfig()).records
    assert sorted(g["record_id"] for g in groups) == sorted(r.record_id for r in records)  # fine-tuning form too
    assert any("messages" in json.loads(line) and "request" not in json.loads(line) for line in build_demo_log(cfg)[0])
    by_id = {g["record_id"]: g for g in groups}
    for record in records:
        group = by_id[record.record_id]
        called = record.response.tool_calls[0].name
        service = re.match(r"^([A-Za-z]+)_\d+_", called)
        assert group["task"] == (service.group(1) if service else group["category"])
    assert {g["category"] for g in groups} == {"live_multiple", "multiple"}
    assert any(g["task"] not in ("live_multiple", "multiple") for g in groups)
    log = path.read_text()  # never inside the log: no group key, no BFCL item id
    assert '"bfcl_id"' not in log and '"task"' not in log and not any(g["bfcl_id"] in log for g in groups)
    assert (
        known_group({"category": "simple_python", "ground_truth": [{"math.factorial": {"number": [5]}}]})
        == "simple_python"
    )
