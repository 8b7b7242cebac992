"""Demo agent log: BFCL function-calling questions replayed as the calls a logging proxy would have recorded.

Each sampled Berkeley Function Calling Leaderboard item becomes one logged LLM call of a "bfcl-assistant" agent:
the question as the user prompt, the item's functions as OpenAI tools, and the ground-truth answer as the LLM's
tool calls. Most lines use the request/response form of logging proxies, about 10% the OpenAI fine-tuning form,
since S1 accepts both. A share of prompts carries synthetic PII for S2 to remove, and a few broken lines are
mixed in for S1's quarantine. Everything is seeded: the same config gives the same lines.

Usage figures are estimates, not measurements: ~4 characters per token over the serialized request (prompt) and
the serialized tool calls (completion). Latency is synthetic: lognormal around ~800 ms, growing with the output.
"""

from __future__ import annotations

import json
import math
import random
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from components.collect.demo_agent import build_agent_log
from components.collect.demo_parts import (
    LOG_DAYS,
    LOG_END,
    DemoDataConfig,
    estimated_tokens,
    malformed_line,
    openai_function_name,
    openai_tool,
    read_json_lines,
    stable_hex,
    time_ordered,
    with_pii,
)
from components.collect.ingest import content_id
from components.core.assets import asset_path

AGENT = "bfcl-assistant"
SYSTEM_PROMPT = (
    "You are a helpful assistant with access to tools. When a request can be served by the tools, "
    "answer with the function calls that fulfil it, with every needed argument."
)
FINE_TUNING_FORM_SHARE = 0.10


def _first_acceptable(options: list[Any]) -> tuple[bool, Any]:
    """BFCL lists every acceptable value of an argument; "" marks it optional. (found, value)."""
    for option in options:
        if option != "":
            return True, _resolve_value(option)
    return False, None


def _resolve_value(value: Any) -> Any:
    # A nested object in BFCL answers is itself {key: [acceptable values]}; plain lists and dicts are literals.
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        resolved = {}
        for key, options in value.items():
            found, chosen = _first_acceptable(options)
            if found:
                resolved[key] = chosen
        return resolved
    if isinstance(value, list):
        return [_resolve_value(item) for item in value]
    return value


def ground_truth_calls(ground_truth: list[dict[str, dict[str, list[Any]]]]) -> list[tuple[str, dict[str, Any]]]:
    """(OpenAI function name, arguments) for each expected call; parallel answers give several."""
    calls = []
    for entry in ground_truth:
        for name, arguments in entry.items():
            chosen = {}
            for argument, options in arguments.items():
                found, value = _first_acceptable(options)
                if found:
                    chosen[argument] = value
            calls.append((openai_function_name(name), chosen))
    return calls


def load_bfcl(category: str, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """The items of one BFCL category, each with its ground truth attached."""
    data_dir = data_dir or asset_path("bfcl-eval")
    questions = data_dir / f"BFCL_v4_{category}.json"
    if not questions.exists():
        raise FileNotFoundError(f"no BFCL category '{category}' ({questions.name}) in {data_dir}")
    answers = {a["id"]: a["ground_truth"] for a in read_json_lines(data_dir / "possible_answer" / questions.name)}
    return [
        {**item, "category": category, "ground_truth": answers[item["id"]]}
        for item in read_json_lines(questions)
        if item["id"] in answers
    ]


def sample_items(
    by_category: dict[str, list[dict[str, Any]]], max_records: int, rng: random.Random
) -> list[dict[str, Any]]:
    """max_records items spread over the categories in proportion to their sizes (largest remainder)."""
    total = sum(len(items) for items in by_category.values())
    wanted = min(max_records, total)
    exact = {name: wanted * len(items) / total for name, items in by_category.items()}
    counts = {name: math.floor(share) for name, share in exact.items()}
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[: wanted - sum(counts.values())]:
        counts[name] += 1
    chosen = [item for name, items in by_category.items() for item in rng.sample(items, counts[name])]
    rng.shuffle(chosen)
    return chosen


def _call_line(
    item: dict[str, Any], index: int, add_pii: bool, fine_tuning_form: bool, cfg: DemoDataConfig, rng: random.Random
) -> str:
    user_messages = [dict(m) for m in item["question"][0]]
    if add_pii:
        last_user = max(i for i, m in enumerate(user_messages) if m["role"] == "user")
        user_messages[last_user]["content"] = with_pii(user_messages[last_user]["content"], rng)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, *user_messages]
    tools = [openai_tool(function) for function in item["function"]]
    tool_calls = [
        {
            "id": f"call_{stable_hex(cfg.seed, item['id'], index, n)}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        for n, (name, arguments) in enumerate(ground_truth_calls(item["ground_truth"]))
    ]
    assistant = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    if fine_tuning_form:
        return json.dumps({"messages": [*messages, assistant], "tools": tools})

    request = {"model": cfg.llm_model, "messages": messages, "tools": tools}
    prompt_tokens, completion_tokens = estimated_tokens(request), estimated_tokens(tool_calls)
    # Longer answers take longer to generate: ~800 ms median for a typical single call.
    latency_ms = rng.lognormvariate(math.log(560 + 5 * completion_tokens), 0.35)
    timestamp = LOG_END - timedelta(seconds=rng.uniform(0, LOG_DAYS * 86400))
    return json.dumps(
        {
            "id": f"req-{stable_hex(cfg.seed, item['id'], index, length=16)}",
            "timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "agent": AGENT,
            "request": request,
            "response": {
                "id": f"chatcmpl-{stable_hex('response', cfg.seed, item['id'], index)}",
                "object": "chat.completion",
                "created": int(timestamp.timestamp()),
                "model": cfg.llm_model,
                "choices": [{"index": 0, "message": assistant, "finish_reason": "tool_calls"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            "latency_ms": round(latency_ms, 1),
        }
    )


# Schema-Guided-Dialogue services in BFCL's live categories are named Domain_Version_Method (Music_3_PlayMedia).
_SERVICE_NAME = re.compile(r"^([A-Za-z]+)_\d+_\w+$")


def known_group(item: dict[str, Any]) -> str:
    """The source's own task of a BFCL item: the service domain of its first expected call when the function is
    a Schema-Guided-Dialogue service (``Music_3_PlayMedia`` -> ``Music``), else its BFCL category."""
    calls = ground_truth_calls(item["ground_truth"])
    match = _SERVICE_NAME.match(calls[0][0]) if calls else None
    return match.group(1) if match else item["category"]


def _record_id(line: str) -> str:
    """The id S1 gives the line's record: its ``id``, else the content hash (the fine-tuning form has no id)."""
    obj = json.loads(line)
    return str(obj["id"]) if obj.get("id") not in (None, "") else content_id(obj)


def build_demo_calls(cfg: DemoDataConfig, data_dir: Path | None = None) -> list[str]:
    """The demo log of ``cfg.kind`` as JSON lines (no trailing newlines), malformed ones at seeded random positions."""
    return build_demo_log(cfg, data_dir)[0]


def build_demo_log(cfg: DemoDataConfig, data_dir: Path | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """The demo log of ``cfg.kind`` (the multi-turn agent or single BFCL calls) and its known groups."""
    if cfg.kind == "agent":
        return build_agent_log(cfg, data_dir)
    return build_single_call_log(cfg, data_dir)


def build_single_call_log(cfg: DemoDataConfig, data_dir: Path | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """The single-call log (kind ``bfcl``) and, per call, its known groups: ``record_id``, BFCL ``category`` and
    ``bfcl_id``, and the ``task`` (:func:`known_group`)."""
    rng = random.Random(cfg.seed)
    by_category = {category: load_bfcl(category, data_dir) for category in cfg.categories}
    items = sample_items(by_category, cfg.max_records, rng)
    with_pii_indices = set(rng.sample(range(len(items)), round(cfg.pii_share * len(items))))
    fine_tuning_indices = set(rng.sample(range(len(items)), round(FINE_TUNING_FORM_SHARE * len(items))))
    lines = [
        _call_line(item, index, index in with_pii_indices, index in fine_tuning_indices, cfg, rng)
        for index, item in enumerate(items)
    ]
    groups = [
        {"record_id": _record_id(line), "category": item["category"], "bfcl_id": item["id"], "task": known_group(item)}
        for line, item in zip(lines, items)
    ]
    # A proxy writes in arrival order: sort the request/response lines by time, the others stay where they fell.
    lines = time_ordered(lines)
    request_lines = [line for line in lines if "request" in json.loads(line)]
    for kind in range(cfg.malformed_lines):
        broken = malformed_line(kind, rng.choice(request_lines))
        lines.insert(rng.randint(0, len(lines)), broken)
    return lines, groups


def write_demo_calls(
    cfg: DemoDataConfig, path: Path, data_dir: Path | None = None, known_groups_path: Path | None = None
) -> Path:
    """Write the log of ``cfg.kind`` to ``path`` and, when ``known_groups_path`` is given, the known groups."""
    lines, groups = build_demo_log(cfg, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if known_groups_path is not None:
        known_groups_path.parent.mkdir(parents=True, exist_ok=True)
        known_groups_path.write_text("".join(json.dumps(g) + "\n" for g in groups), encoding="utf-8")
    return path
