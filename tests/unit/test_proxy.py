"""The logging proxy against a fake OpenAI-compatible upstream, wired in-process (no sockets, no network)."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from components.collect import CollectConfig, collect_file, parse_call
from components.proxy import create_app

CLIENT_KEY = "sk-client-secret-123"
UPSTREAM_KEY = "sk-upstream-secret-456"
PRICES = CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}})
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_CALL_RESPONSE = {
    "id": "chatcmpl-tool-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
}
# A stream whose text and tool-call arguments are split across chunks, as real upstreams send them.
STREAM_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]},
    {"choices": [{"index": 0, "delta": {"content": "check."}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_s", "type": "function",
                                                         "function": {"name": "get_weather", "arguments": ""}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Rome\"}"}}]}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440}},
]


def sse_events() -> list[str]:
    base = {"id": "chatcmpl-stream-1", "object": "chat.completion.chunk", "created": 1700000001, "model": "gpt-4o"}
    return [f"data: {json.dumps({**base, **chunk})}\n\n" for chunk in STREAM_CHUNKS] + ["data: [DONE]\n\n"]


def fake_upstream(seen_headers: list[dict[str, str]]) -> FastAPI:
    upstream = FastAPI()

    @upstream.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        seen_headers.append(dict(request.headers))
        body = await request.json()
        if body["model"] == "broken":
            return JSONResponse(status_code=500, content={"error": {"message": "upstream exploded"}})
        if body.get("stream"):
            async def events():
                for event in sse_events():
                    yield event.encode()
            return StreamingResponse(events(), media_type="text/event-stream")
        return TOOL_CALL_RESPONSE

    @upstream.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        seen_headers.append(dict(request.headers))
        return {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}

    return upstream


def chat_request(model: str = "gpt-4o", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "tools": [WEATHER_TOOL],
            "messages": [{"role": "system", "content": "You are a weather agent."},
                         {"role": "user", "content": "Weather in the city?"}]}


@pytest.fixture
def seen_headers() -> list[dict[str, str]]:
    return []


def proxy_client(store: Path, seen_headers: list[dict[str, str]], **options: Any) -> TestClient:
    transport = httpx.ASGITransport(app=fake_upstream(seen_headers))
    return TestClient(create_app("http://upstream.test/v1", store, PRICES, agent="fallback-agent",
                                 transport=transport, **options))


def stored_lines(store: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(store.glob("calls-*.jsonl")) for line in path.read_text().splitlines()]


def test_non_streaming_tool_call_is_returned_unchanged_and_recorded(tmp_path: Path, seen_headers):
    with proxy_client(tmp_path, seen_headers) as client:
        answer = client.post("/v1/chat/completions", json=chat_request(),
                             headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Agent-Name": "weather-bot"})
        health = client.get("/healthz").json()
    assert answer.status_code == 200
    assert answer.json() == TOOL_CALL_RESPONSE
    assert seen_headers[0]["authorization"] == f"Bearer {CLIENT_KEY}"
    assert "x-agent-name" not in seen_headers[0]

    [line] = stored_lines(tmp_path)
    assert set(line) == {"id", "timestamp", "agent", "request", "response", "latency_ms"}
    assert line["request"] == chat_request() and line["response"] == TOOL_CALL_RESPONSE
    record = parse_call(line, PRICES)
    assert record.record_id == "chatcmpl-tool-1" and record.agent == "weather-bot"
    assert [(c.name, c.parsed_arguments()) for c in record.response.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert (record.prompt_tokens, record.completion_tokens) == (1000, 200)
    assert record.cost_usd == pytest.approx((1000 * 2.5 + 200 * 10.0) / 1e6)
    assert record.timestamp is not None and record.timestamp.utcoffset().total_seconds() == 0
    assert record.latency_ms is not None and record.latency_ms >= 0
    assert health["recorded"] == 1 and health["llm_cost_usd"] == pytest.approx(record.cost_usd)


def test_streaming_passes_every_chunk_and_records_the_rebuilt_message(tmp_path: Path, seen_headers):
    with proxy_client(tmp_path, seen_headers) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_request(stream=True)) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            received = "".join(answer.iter_text())
    assert received == "".join(sse_events())

    [line] = stored_lines(tmp_path)
    record = parse_call(line, PRICES)
    assert record.record_id == "chatcmpl-stream-1" and record.agent == "fallback-agent"
    assert record.response.content == "Let me check."
    [call] = record.response.tool_calls
    assert (call.id, call.name, call.parsed_arguments()) == ("call_s", "get_weather", {"city": "Rome"})
    assert (record.prompt_tokens, record.completion_tokens) == (400, 40)
    assert record.cost_usd == pytest.approx((400 * 2.5 + 40 * 10.0) / 1e6)


def test_upstream_error_is_passed_through_and_not_recorded(tmp_path: Path, seen_headers):
    with proxy_client(tmp_path, seen_headers) as client:
        answer = client.post("/v1/chat/completions", json=chat_request(model="broken"))
        health = client.get("/healthz").json()
    assert answer.status_code == 500
    assert answer.json() == {"error": {"message": "upstream exploded"}}
    assert stored_lines(tmp_path) == []
    assert (health["upstream_errors"], health["recorded"]) == (1, 0)


def test_models_are_forwarded_with_the_configured_upstream_key(tmp_path: Path, seen_headers):
    with proxy_client(tmp_path, seen_headers, upstream_api_key=UPSTREAM_KEY) as client:
        answer = client.get("/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert answer.status_code == 200 and answer.json()["data"][0]["id"] == "gpt-4o"
    # The configured key replaces the client's: the client's key never reaches the upstream.
    assert seen_headers[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_store_holds_no_credentials_and_is_private(tmp_path: Path, seen_headers):
    # A day file left world-readable (copied in, older tool) is tightened on the next append.
    today_file = tmp_path / f"calls-{datetime.now(timezone.utc):%Y%m%d}.jsonl"
    today_file.touch()
    today_file.chmod(0o644)
    with proxy_client(tmp_path, seen_headers, upstream_api_key=UPSTREAM_KEY) as client:
        for stream in (False, True):
            client.post("/v1/chat/completions", json=chat_request(stream=stream),
                        headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    [store_file] = list(tmp_path.glob("calls-*.jsonl"))
    text = store_file.read_text()
    assert len(text.splitlines()) == 2
    assert CLIENT_KEY not in text and UPSTREAM_KEY not in text and "authorization" not in text.lower()
    assert stat.S_IMODE(store_file.stat().st_mode) == 0o600
    # The store is exactly what `llm2slm collect` reads: both lines normalize, nothing is quarantined.
    result = collect_file(store_file, PRICES)
    assert len(result.records) == 2 and result.quarantine == []


def test_a_failing_store_does_not_break_the_answer(tmp_path: Path, seen_headers):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store directory should be")
    with proxy_client(blocked, seen_headers) as client:
        answer = client.post("/v1/chat/completions", json=chat_request())
        health = client.get("/healthz").json()
    assert answer.status_code == 200 and answer.json() == TOOL_CALL_RESPONSE
    assert (health["write_failures"], health["recorded"]) == (1, 0)
