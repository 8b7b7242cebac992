"""S1 live collection: an OpenAI-compatible logging proxy between the agent and its LLM.

The agent points its ``base_url`` at this proxy and uses one of the proxy's own API keys (``LLM2SLM_PROXY_KEYS``;
any other key gets 401). Every chat completion is answered by the first *responder* that takes it, else forwarded
to the upstream LLM with the upstream's key (``LLM2SLM_UPSTREAM_API_KEY``; the client's key never leaves the
proxy), answered unchanged (streams chunk by chunk, upstream errors with their status and body), and recorded.
A request body over ``max_body_bytes`` (8 MiB by default) is answered 413. ``GET /healthz`` needs no key and says
only that the proxy is up; ``GET /stats`` (a client key) adds the upstream and the call and cost counts.

Records go to ``store_dir/calls-YYYYMMDD.jsonl``, encrypted (components/serve/call_store.py over
components/core/secure_store.py: one Fernet token per line, 0600 files). Each decrypts to the request/response form ``llm2slm collect --source proxy-store:DIR`` reads:
``{"id", "timestamp", "agent", "request", "response", "latency_ms", "served_by"}``; a failed upstream call is
``{..., "error": {"status", "type"}}`` (collect quarantines those with their status; the upstream's error body is
never kept: it may echo the prompt). With ``on_write`` (S2's anonymizer) the normalized, anonymized record is stored
instead: ``{"record": {...}}``; a failed call keeps only its anonymized request (``request_record``) beside its
status, and a call the anonymizer fails on becomes ``{"id", "timestamp", "quarantined": reason}``: raw PII never
reaches the disk. No credential (Authorization header, API key) is ever written or logged.

Durability: a record is written after the answer has gone out (in a worker thread, so the client does not wait for
the disk), as one ``O_APPEND`` write followed by ``fsync``; it counts as ``recorded`` only then. Uvicorn finishes
in-flight requests and their background writes on a graceful shutdown (SIGINT/SIGTERM), so a restart loses no
accepted record. Recording never breaks the agent: a call that cannot be recorded is logged and counted.

Responders (the hook for routing): ``responders`` are tried in order before the upstream; each gets the request and
agent name and returns a ``chat.completion`` dict to answer with, or None to pass. A router that answers a task
cluster with its promoted SLM is one more responder; the upstream stays the fallback and recording is unchanged.
A responder annotates the call through :func:`current_note`: the note's ``fields`` are stored as the call's
``metadata`` (collect keeps them as the record's metadata), and ``on_llm_answer``, if set, is called with the LLM's
answer just before the call is written (e.g. to compare a shadow SLM's answer with it; it may add to ``fields``).
A responder that answered and set ``audit`` has the LLM asked too, after its answer went out
(components/serve/audit.py): the stored call holds the LLM's answer, the hook scores the responder's against it; if the LLM fails, the
responder's answer is stored as usual (counted in ``audit_failures``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from components.collect.config import CollectConfig
from components.collect.sources.common import RecordError
from components.collect.sources.openai_jsonl import parse_call
from components.core.schema import CallRecord, ChatMessage
from components.serve.call_store import CallStore, anonymized_on_write, upstream_failure
from components.serve.limits import DEFAULT_MAX_REQUEST_BYTES, BodyTooLarge, read_body
from components.serve.sse import SSEAccumulator, completion_as_sse

__all__ = ["CallNote", "CallStore", "Responder", "completion_as_sse", "create_app", "current_note", "serve"]

logger = logging.getLogger(__name__)

AGENT_HEADER = "x-agent-name"
PROXY_KEYS_ENV = "LLM2SLM_PROXY_KEYS"
UPSTREAM_KEY_ENV = "LLM2SLM_UPSTREAM_API_KEY"
# Far above any chat completion an agent sends (a 128k-token context is ~0.5 MiB of text), far below what would
# strain the proxy's memory: every request body is buffered whole before it is forwarded and recorded.


class Responder(Protocol):
    """Answers a chat completion itself (e.g. a promoted SLM), or returns None to let the next one try."""

    name: str

    def __call__(self, request_body: dict[str, Any], agent: str) -> Awaitable[dict[str, Any] | None]: ...


@dataclass
class CallNote:
    """What responders add to the call being served (see the module docstring); no prompt text belongs here."""

    fields: dict[str, Any] = field(default_factory=dict)
    on_llm_answer: Callable[[ChatMessage], None] | None = None
    # Set by a responder that answered: the proxy also asks the LLM (in the background, after the answer went out),
    # stores the LLM's answer as the call's response and gives it to ``on_llm_answer`` (components/serve/audit.py).
    audit: bool = False


_call_note: ContextVar[CallNote | None] = ContextVar("llm2slm_call_note", default=None)


def current_note() -> CallNote:
    """The note of the call being served; outside a proxy request, a throwaway one (a responder called directly)."""
    return _call_note.get() or CallNote()


def create_app(
    upstream_url: str,
    store_dir: Path,
    cfg: CollectConfig,
    client_keys: Sequence[str],
    agent: str = "default",
    upstream_api_key: str | None = None,
    timeout_s: float = 120.0,
    responders: Sequence[Responder] = (),
    on_write: Callable[[CallRecord], CallRecord] | None = None,
    store_key: bytes | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_body_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The proxy app; ``transport`` replaces the network (tests may route it to an in-process upstream). A request
    body over ``max_body_bytes`` is answered 413 (the SLM server's rule: components/serve/limits.py)."""
    if not client_keys:
        raise ValueError(f"the proxy needs at least one client API key (${PROXY_KEYS_ENV}, comma-separated)")
    accepted = [key.encode() for key in client_keys]
    upstream = upstream_url.rstrip("/")
    store = CallStore(store_dir, key=store_key)
    stats = {
        "recorded": 0,
        "upstream_errors": 0,
        "unrecordable": 0,
        "write_failures": 0,
        "unauthorized": 0,
        "answered_by_responder": 0,
        "audits": 0,
        "audit_failures": 0,
        "llm_cost_usd": 0.0,
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport, limits=limits) as client:
            app.state.client = client
            yield

    app = FastAPI(title="llm2slm logging proxy", lifespan=lifespan)
    app.state.stats = stats

    def refused(request: Request) -> JSONResponse | None:
        """401 unless the request carries one of the proxy's client keys (compared in constant time)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() == "bearer" and any(hmac.compare_digest(given, key) for key in accepted):
            return None
        stats["unauthorized"] += 1
        return JSONResponse(
            status_code=401,
            content={
                "error": {
                    "message": "invalid or missing API key for the llm2slm proxy",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )

    def upstream_headers() -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if upstream_api_key:
            headers["authorization"] = f"Bearer {upstream_api_key}"
        return headers

    def annotate(call: dict[str, Any], note: CallNote, answer: CallRecord | None, llm_answered: bool) -> None:
        """Run the note's LLM-answer hook and put its fields on the call; a failing hook never loses the call."""
        if answer is not None and note.on_llm_answer is not None and llm_answered:
            try:
                note.on_llm_answer(answer.response)
            except Exception:  # noqa: BLE001
                logger.exception("proxy: the LLM-answer hook of call %s failed", call["id"])
        if note.fields:
            call["metadata"] = {**note.fields}

    def store_call(call: dict[str, Any], started_at: datetime, note: CallNote, llm_answered: bool = False) -> None:
        """Check, transform and write one call (runs in a worker thread after the answer has been sent);
        ``llm_answered``: its response is the LLM's (upstream, or an audit's)."""
        cost = 0.0
        try:
            parsed = parse_call(call, cfg) if "response" in call else None
            annotate(call, note, parsed, llm_answered or call["served_by"] == "upstream")
            if parsed is not None:
                parsed = parsed.model_copy(update={"metadata": call.get("metadata", {})})
                cost = parsed.cost_usd or 0.0
            if on_write is not None:
                call = anonymized_on_write(call, parsed, on_write)
            store.append(call, started_at)
        except RecordError as reason:
            # collect would quarantine it anyway; keep the store to calls that will train something.
            stats["unrecordable"] += 1
            logger.warning("proxy: call %s not recorded: %s", call["id"], reason)
            return
        except OSError as error:
            stats["write_failures"] += 1
            logger.error("proxy: could not write call %s to %s: %s", call["id"], store.store_dir, type(error).__name__)
            return
        except Exception:  # noqa: BLE001 - e.g. the on-write hook failed: count it, keep serving
            stats["unrecordable"] += 1
            logger.exception("proxy: call %s not recorded", call["id"])
            return
        if "record" in call or "response" in call:
            stats["recorded"] += 1
            stats["llm_cost_usd"] += cost

    def recording(
        request_body: dict[str, Any],
        agent_name: str,
        started_at: datetime,
        started: float,
        note: CallNote,
        response_body: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        served_by: str = "upstream",
    ) -> BackgroundTask:
        """The task that records this call once its answer is out; latency is taken now, at answer time."""
        call = {
            "id": (response_body or {}).get("id") or f"call-{uuid.uuid4().hex}",
            "timestamp": started_at.isoformat(),
            "agent": agent_name,
            "request": request_body,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "served_by": served_by,
        }
        call.update({"error": error} if error is not None else {"response": response_body})
        return BackgroundTask(store_call, call, started_at, note)

    async def audit_then_store(client: httpx.AsyncClient, served: BackgroundTask, note: CallNote) -> None:
        """An audited call, once the responder's answer is out: the LLM answers the same request (not streamed);
        the call is stored with the LLM's answer, the hook scores the responder's against it. Without an LLM
        answer the responder's call is stored as it was."""
        call, started_at = served.args[0], served.args[1]
        request_body = {**call["request"], "stream": False}
        request_body.pop("stream_options", None)
        try:
            answer = await client.post(
                f"{upstream}/chat/completions", content=json.dumps(request_body), headers=upstream_headers()
            )
            body = answer.json() if not answer.is_error else None
        except (httpx.HTTPError, ValueError) as error:
            logger.warning("proxy: the audit of call %s failed: %s", call["id"], type(error).__name__)
            body = None
        if not isinstance(body, dict):
            stats["audit_failures"] += 1
            await run_in_threadpool(store_call, call, started_at, note)
            return
        stats["audits"] += 1
        audited = {**call, "id": body.get("id") or call["id"], "response": body}
        await run_in_threadpool(store_call, audited, started_at, note, True)

    def passthrough(answer: httpx.Response, background: BackgroundTask | None = None) -> Response:
        return Response(
            content=answer.content,
            status_code=answer.status_code,
            background=background,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    def unreachable(error: httpx.HTTPError) -> JSONResponse:
        stats["upstream_errors"] += 1
        logger.error("proxy: upstream %s unreachable: %s", upstream, type(error).__name__)
        return JSONResponse(
            status_code=502,
            content={"error": {"message": f"upstream LLM unreachable: {type(error).__name__}", "type": "proxy_error"}},
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # Unauthenticated (load balancers, probes): liveness only. The upstream URL and the traffic and cost
        # figures tell a stranger where the LLM is and what the agent spends: they are under /stats, with a key.
        return {"status": "ok"}

    @app.get("/stats")
    async def stats_view(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        return JSONResponse({"status": "ok", "upstream": upstream, **stats})

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            answer = await request.app.state.client.get(f"{upstream}/models", headers=upstream_headers())
        except httpx.HTTPError as error:
            return unreachable(error)
        return passthrough(answer)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            raw_body = await read_body(request, max_body_bytes)
        except BodyTooLarge as error:  # nothing of it is forwarded or recorded
            logger.warning("proxy: %s", error)
            error_body = {"message": str(error), "type": "invalid_request_error", "code": "request_too_large"}
            return JSONResponse(status_code=413, content={"error": error_body})
        try:
            request_body = json.loads(raw_body)
        except ValueError:  # not JSON or not UTF-8
            request_body = None  # forwarded anyway: the upstream's own error is the most useful answer
        recordable = isinstance(request_body, dict)
        agent_name = request.headers.get(AGENT_HEADER) or agent
        started_at, started = datetime.now(UTC), time.perf_counter()
        # Set in this request's own context: concurrent requests each see their own note.
        note = CallNote()
        _call_note.set(note)

        if recordable:
            for responder in responders:
                completion = await responder(request_body, agent_name)
                if completion is None:
                    continue
                stats["answered_by_responder"] += 1
                background = recording(
                    request_body, agent_name, started_at, started, note, completion, served_by=responder.name
                )
                if note.audit:
                    background = BackgroundTask(audit_then_store, request.app.state.client, background, note)
                if request_body.get("stream"):
                    return Response(
                        completion_as_sse(completion), media_type="text/event-stream", background=background
                    )
                return JSONResponse(completion, background=background)

        client: httpx.AsyncClient = request.app.state.client
        outgoing = client.build_request(
            "POST", f"{upstream}/chat/completions", content=raw_body, headers=upstream_headers()
        )
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
            if not recordable:
                return passthrough(answer)
            if answer.is_error:
                stats["upstream_errors"] += 1
                failure = upstream_failure(answer.status_code, answer.content)
                return passthrough(
                    answer, recording(request_body, agent_name, started_at, started, note, error=failure)
                )
            try:
                body = answer.json()
            except ValueError:  # a 2xx that is not JSON
                stats["unrecordable"] += 1
                return passthrough(answer)
            return passthrough(
                answer,
                recording(request_body, agent_name, started_at, started, note, body)
                if isinstance(body, dict)
                else None,
            )

        accumulator = SSEAccumulator()
        outcome: dict[str, bool] = {"completed": False}

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for piece in answer.aiter_bytes():
                    accumulator.feed(piece)
                    yield piece
                outcome["completed"] = True
            finally:
                await answer.aclose()

        def record_stream() -> None:
            # Only a stream that reached its end is a call; a client that hung up mid-way left a partial one.
            if outcome["completed"] and recordable:
                task = recording(request_body, agent_name, started_at, started, note, accumulator.response())
                task.func(*task.args, **task.kwargs)

        return StreamingResponse(
            relay(),
            status_code=answer.status_code,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
            background=BackgroundTask(record_stream),
        )

    return app


def serve(
    host: str,
    port: int,
    upstream_url: str,
    store_dir: Path,
    cfg: CollectConfig,
    client_keys: Sequence[str],
    agent: str = "default",
    upstream_api_key: str | None = None,
    timeout_s: float = 120.0,
    on_write: Callable[[CallRecord], CallRecord] | None = None,
    log_level: str = "info",
    responders: Sequence[Responder] = (),
    max_body_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Run the proxy with uvicorn until interrupted (what ``llm2slm proxy`` calls)."""
    import uvicorn

    app = create_app(
        upstream_url,
        store_dir,
        cfg,
        client_keys,
        agent=agent,
        upstream_api_key=upstream_api_key,
        timeout_s=timeout_s,
        on_write=on_write,
        responders=responders,
        max_body_bytes=max_body_bytes,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
