"""A scripted teacher LLM on 127.0.0.1: each request-writing call returns the next scripted request, each answering
call (one that offers tools) the scripted answer to its request, so a test can make the teacher misbehave in every way the
synthesis step must reject. ``fail_first`` answers HTTP 500 that many times first (to exercise the retries)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

USAGE = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def answer(kind: str, city: str) -> dict[str, Any]:
    """The assistant message of one scripted answer kind."""
    calls = {
        "good": [_call("get_weather", json.dumps({"city": city}))],
        "malformed": [_call("get_weather", '{"city": ')],
        "unoffered": [_call("delete_everything", "{}")],
        "ungrounded": [_call("get_weather", json.dumps({"city": "Atlantis"}))],
        "schema": [_call("get_weather", json.dumps({"town": city}))],
    }
    if kind == "text":
        return {"role": "assistant", "content": f"It is sunny in {city}."}
    return {"role": "assistant", "content": None, "tool_calls": calls[kind]}


def fake_teacher_app(script: list[tuple[str, str, str]], fail_first: int = 0) -> FastAPI:
    """``script``: (request text, answer kind, city named in the answer) per example, in order."""
    app = FastAPI()
    state = {"requests": 0, "answers": 0, "failures": 0, "seen": []}
    app.state.calls = state

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        state["seen"].append(body)
        if state["failures"] < fail_first:
            state["failures"] += 1
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
        if body.get("tools"):  # answer the scripted request this call asks about
            asked = body["messages"][-1]["content"]
            _, kind, city = next((entry for entry in script if entry[0] == asked), script[-1])
            state["answers"] += 1
            message = answer(kind, city)
        else:
            text = script[min(state["requests"], len(script) - 1)][0]
            state["requests"] += 1
            message = {"role": "assistant", "content": text}
        return JSONResponse(
            {"id": "t", "object": "chat.completion", "choices": [{"index": 0, "message": message}], "usage": USAGE}
        )

    return app
