"""A fake OpenAI-compatible LLM served on 127.0.0.1 over real HTTP (uvicorn in a thread), and a helper to run any
ASGI app the same way. Shared by the proxy and MLflow-trace tests and by benchmarks/proxy_overhead.py.

Deterministic answers: model "broken" -> HTTP 500; model "echo-error" -> HTTP 400 quoting the messages; a request with tools -> a get_weather tool call for the city
named last in the user message; otherwise a text answer echoing the user message. ``stream: true`` sends the same
answer as SSE chunks, splitting text and tool-call arguments across chunks as real upstreams do.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

CREATED = 1700000000


def answer_for(body: dict[str, Any]) -> dict[str, Any]:
    user_text = next(
        (m.get("content") or "" for m in reversed(body.get("messages") or []) if m.get("role") == "user"), ""
    )
    if body.get("tools"):
        city = user_text.rstrip("?.! ").split()[-1] if user_text.strip() else "Paris"
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                }
            ],
        }
    return {"role": "assistant", "content": f"You said: {user_text}"}


def completion(body: dict[str, Any], completion_id: str) -> dict[str, Any]:
    message = answer_for(body)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model"),
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


def stream_chunks(body: dict[str, Any], completion_id: str) -> list[dict[str, Any]]:
    message = answer_for(body)
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": CREATED, "model": body.get("model")}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if message.get("content"):
        text = message["content"]
        deltas += [{"content": text[: len(text) // 2]}, {"content": text[len(text) // 2 :]}]
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        deltas += [
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            },
            {"tool_calls": [{"index": index, "function": {"arguments": arguments[:5]}}]},
            {"tool_calls": [{"index": index, "function": {"arguments": arguments[5:]}}]},
        ]
    chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append(
            {**base, "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
        )
    return chunks


def fake_openai_app(delay_s: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.state.requests = []
    counter = iter(range(1, 1_000_000_000))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append({"headers": dict(request.headers), "body": body})
        if delay_s:
            import asyncio

            await asyncio.sleep(delay_s)
        if body.get("model") == "broken":
            return JSONResponse(
                status_code=500, content={"error": {"message": "upstream exploded", "type": "server_error"}}
            )
        if body.get("model") == "echo-error":  # as real upstreams do, the error message quotes the request
            quoted = json.dumps(body.get("messages"))[:200]
            return JSONResponse(
                status_code=400,
                content={"error": {"message": f"invalid request: {quoted}", "type": "invalid_request_error"}},
            )
        completion_id = f"chatcmpl-{next(counter)}"
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for chunk in stream_chunks(body, completion_id):
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return completion(body, completion_id)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        app.state.requests.append({"headers": dict(request.headers), "body": None})
        return {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "created": CREATED, "owned_by": "fake"}]}

    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields its base URL. Stopped through its server handle."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
