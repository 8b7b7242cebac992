"""S1 live collection: an OpenAI-compatible logging proxy between the agent and its LLM.

The agent points its ``base_url`` at this proxy; every chat completion is forwarded unchanged to the upstream LLM,
answered unchanged (streams are passed through chunk by chunk), and recorded as one line of
``store_dir/calls-YYYYMMDD.jsonl`` in the request/response form that ``llm2slm collect`` reads:
``{"id", "timestamp", "agent", "request", "response", "latency_ms"}``.

The store holds raw prompts, so its files are created 0o600 and no credential (Authorization header, API key)
is ever written. Recording must never break the agent: a call that cannot be recorded is logged and counted,
and the client still gets its answer. Upstream errors are passed back as they are and are not recorded.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from components.collect import CollectConfig, RecordError, parse_call

logger = logging.getLogger(__name__)

AGENT_HEADER = "x-agent-name"
STORE_FILE_MODE = 0o600
STORE_DIR_MODE = 0o700


class CallStore:
    """Append-only JSONL store, one file per UTC day; one ``os.write`` per line under a lock."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = Path(store_dir)
        self._lock = threading.Lock()

    def path_for(self, moment: datetime) -> Path:
        return self.store_dir / f"calls-{moment:%Y%m%d}.jsonl"

    def append(self, call: dict[str, Any], moment: datetime) -> Path:
        line = (json.dumps(call, ensure_ascii=False) + "\n").encode("utf-8")
        path = self.path_for(moment)
        with self._lock:
            self.store_dir.mkdir(parents=True, exist_ok=True, mode=STORE_DIR_MODE)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, STORE_FILE_MODE)
            try:
                # The mode argument is ignored for an existing file and masked by the umask: enforce it.
                os.fchmod(descriptor, STORE_FILE_MODE)
                os.write(descriptor, line)
            finally:
                os.close(descriptor)
        return path


class StreamAccumulator:
    """Rebuilds the final chat.completion from the SSE chunks of a streamed one."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.done = False
        self.meta: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    def feed(self, raw: bytes) -> None:
        # Chunks may split an event or a multi-byte character anywhere: decode incrementally, parse whole lines.
        self._pending += self._decoder.decode(raw)
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._feed_line(line.rstrip("\r"))

    def _feed_line(self, line: str) -> None:
        if not line.startswith("data:"):
            return  # blank separators, comments, event/id fields
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            logger.warning("proxy: skipped an SSE data line that is not JSON")
            return
        if not isinstance(chunk, dict):
            return
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self.meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._feed_choice(choice)

    def _feed_choice(self, choice: dict[str, Any]) -> None:
        state = self._choices.setdefault(choice.get("index", 0),
                                         {"role": "assistant", "content": [], "tool_calls": {}, "finish": None})
        delta = choice.get("delta") or {}
        if delta.get("role"):
            state["role"] = delta["role"]
        if delta.get("content"):
            state["content"].append(delta["content"])
        for piece in delta.get("tool_calls") or []:
            # The first delta of a tool call carries its id and name; later ones only argument fragments.
            call = state["tool_calls"].setdefault(piece.get("index", 0),
                                                  {"id": None, "type": "function",
                                                   "function": {"name": "", "arguments": ""}})
            call["id"] = call["id"] or piece.get("id")
            function = piece.get("function") or {}
            call["function"]["name"] = call["function"]["name"] or function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            state["finish"] = choice["finish_reason"]

    def response(self) -> dict[str, Any]:
        self.feed(b"\n")  # flush a last line the upstream did not terminate
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {"role": state["role"], "content": "".join(state["content"]) or None}
            if state["tool_calls"]:
                message["tool_calls"] = [state["tool_calls"][i] for i in sorted(state["tool_calls"])]
            choices.append({"index": index, "message": message, "finish_reason": state["finish"]})
        response: dict[str, Any] = {**self.meta, "object": "chat.completion", "choices": choices}
        if self.usage is not None:
            response["usage"] = self.usage
        return response


def create_app(upstream_url: str, store_dir: Path, cfg: CollectConfig, agent: str = "default",
               upstream_api_key: str | None = None, timeout_s: float = 120.0,
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The proxy app; ``transport`` replaces the network (tests route it to a fake upstream in-process)."""
    upstream = upstream_url.rstrip("/")
    store = CallStore(store_dir)
    stats = {"recorded": 0, "upstream_errors": 0, "unrecordable": 0, "write_failures": 0, "llm_cost_usd": 0.0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            app.state.client = client
            yield

    app = FastAPI(title="llm2slm logging proxy", lifespan=lifespan)
    app.state.stats = stats

    def upstream_headers(request: Request) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        authorization = f"Bearer {upstream_api_key}" if upstream_api_key else request.headers.get("authorization")
        if authorization:
            headers["authorization"] = authorization
        return headers

    def record(request_body: dict[str, Any], response_body: dict[str, Any], agent_name: str,
               started_at: datetime, started: float) -> None:
        call = {"id": response_body.get("id") or f"call-{uuid.uuid4().hex}",
                "timestamp": started_at.isoformat(), "agent": agent_name,
                "request": request_body, "response": response_body,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3)}
        try:
            parsed = parse_call(call, cfg)
        except RecordError as error:
            # collect would quarantine it anyway; keep the store to calls that will train something.
            stats["unrecordable"] += 1
            logger.warning("proxy: call %s not recorded: %s", call["id"], error)
            return
        try:
            store.append(call, started_at)
        except OSError as error:
            stats["write_failures"] += 1
            logger.error("proxy: could not write call %s to %s: %s", call["id"], store.store_dir, error)
            return
        stats["recorded"] += 1
        stats["llm_cost_usd"] += parsed.cost_usd or 0.0

    def passthrough(upstream_response: httpx.Response) -> Response:
        return Response(content=upstream_response.content, status_code=upstream_response.status_code,
                        media_type=upstream_response.headers.get("content-type", "application/json"))

    def unreachable(error: httpx.HTTPError) -> JSONResponse:
        stats["upstream_errors"] += 1
        logger.error("proxy: upstream %s unreachable: %s", upstream, type(error).__name__)
        return JSONResponse(status_code=502, content={"error": {
            "message": f"upstream LLM unreachable: {type(error).__name__}", "type": "proxy_error"}})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "upstream": upstream, **stats}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            answer = await request.app.state.client.get(f"{upstream}/models", headers=upstream_headers(request))
        except httpx.HTTPError as error:
            return unreachable(error)
        return passthrough(answer)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw_body = await request.body()
        try:
            request_body = json.loads(raw_body)
        except ValueError:  # not JSON or not UTF-8
            request_body = None  # forwarded anyway: the upstream's own error is the most useful answer
        recordable = isinstance(request_body, dict)
        agent_name = request.headers.get(AGENT_HEADER) or agent
        started_at, started = datetime.now(timezone.utc), time.perf_counter()
        client: httpx.AsyncClient = request.app.state.client
        outgoing = client.build_request("POST", f"{upstream}/chat/completions", content=raw_body,
                                        headers=upstream_headers(request))
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as error:
            return unreachable(error)

        streaming = answer.headers.get("content-type", "").startswith("text/event-stream")
        if answer.is_error or not streaming:
            try:
                await answer.aread()
            finally:
                await answer.aclose()
            if answer.is_error:
                stats["upstream_errors"] += 1
            elif recordable:
                try:
                    record(request_body, answer.json(), agent_name, started_at, started)
                except (ValueError, AttributeError) as error:  # a 2xx that is not a completion object
                    stats["unrecordable"] += 1
                    logger.warning("proxy: upstream answer not recorded: %s", type(error).__name__)
            return passthrough(answer)

        async def relay() -> AsyncIterator[bytes]:
            accumulator = StreamAccumulator()
            completed = False
            try:
                async for piece in answer.aiter_bytes():
                    accumulator.feed(piece)
                    yield piece
                completed = True
            finally:
                await answer.aclose()
            # Only a stream that reached its end is a call; a client that hung up mid-way left a partial one.
            if completed and recordable:
                try:
                    record(request_body, accumulator.response(), agent_name, started_at, started)
                except Exception:  # noqa: BLE001 - the client already has its answer; never fail it now
                    stats["unrecordable"] += 1
                    logger.exception("proxy: streamed call not recorded")

        return StreamingResponse(relay(), status_code=answer.status_code, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    return app


def serve(host: str, port: int, upstream_url: str, store_dir: Path, cfg: CollectConfig, agent: str = "default",
          upstream_api_key: str | None = None, timeout_s: float = 120.0, log_level: str = "info") -> None:
    """Run the proxy with uvicorn until interrupted (what ``llm2slm proxy`` calls)."""
    import uvicorn

    app = create_app(upstream_url, store_dir, cfg, agent=agent, upstream_api_key=upstream_api_key,
                     timeout_s=timeout_s)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
