"""The embedded SLM server: a run's cluster adapters behind one OpenAI-compatible chat-completions endpoint.

``model`` names the cluster (``cluster-<id>``, vLLM's convention of one model id per LoRA module). Each call is
answered the way S4-S6 answer it: the cluster's prompt spec and the request's tool grammar are applied here
(components/slm through :class:`components.slm.adapter_pool.SLMPool`), so a client sends plain OpenAI requests and
gets ``tool_calls`` back. Concurrent calls to one model are answered in one batch by a single worker thread
(components/serve/batching.py). ``stream: true`` is served as a one-chunk stream once the answer is complete (the
same as the proxy does for its responders): clients that only speak streaming work, with no earlier first token.

Keys: the proxy's (``LLM2SLM_PROXY_KEYS``, comma-separated), compared in constant time; ``/healthz`` and
``/metrics`` (Prometheus: requests, tokens, latency per model; adapter reloads) hold no prompt text and are open.
A metric's ``model`` label is a served id (``cluster-<id>``, in that spelling only) or ``unknown``, never the
request's raw string, so clients cannot grow the series. A request body over ``max_request_bytes`` gets 413 unread.
``/v1/engine`` tells which engine and hardware answer, and the throughput and cost per 1k calls measured so far, at
the configured hourly price (components/scoring/costs.py's rule): the cost figure comes from the serving path.

Confidence: each answer carries an ``llm2slm`` object beside ``choices``: ``features`` (the answer's confidence
features, components/slm/confidence.py) and ``confidence`` whenever the engine returns features. For a cluster with a
selective gate (router.yaml mode ``selective``) ``confidence`` is the gate's calibrated P(the answer matches the
LLM's) (``calibrated: true``), with the gate's ``threshold`` and ``decision`` (``accept``/``defer``: whether the router
would send this answer); otherwise it is the answer's mean token probability, exp(``mean_logprob``)
(``calibrated: false``). ``logprobs: true`` adds each generated token's log-probability in OpenAI's
``choices[0].logprobs.content`` shape (under the tool grammar, renormalised over the tokens it allowed; no
``top_logprobs`` alternatives); it is null where the engine gives none.

Hot reload: ``resolve()`` (e.g. the registry's ``champion`` aliases, tasks/helpers/champions.py) is polled every
``poll_s``; an adapter that changed is loaded on the worker thread first and then serves the next batch, with no
restart. An adapter that fails to load leaves the cluster on its previous one; a rollback is just another change.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from components.collect.sources.common import RecordError
from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.serve.batching import BatchWorker
from components.serve.limits import DEFAULT_MAX_REQUEST_BYTES, BodyTooLarge, read_body
from components.serve.proxy import completion_as_sse
from components.serve.service import RouterConfig, as_completion, request_record, selective_gates
from components.slm.confidence import SelectiveGate
from components.slm.engines import DEFAULT_ENGINE, Engine, ServedAdapter, make_engine

logger = logging.getLogger(__name__)

MODEL_PREFIX = "cluster-"
# The metrics' model label of a request naming no served model: labels stay the served ids, a bounded set.
UNKNOWN_MODEL = "unknown"


# () -> cluster id -> what serves it now; polled for hot reloads.
Resolve = Callable[[], Mapping[int, ServedAdapter]]


class SLMServerConfig(StepConfig):
    max_new_tokens: int = Field(256, ge=1)  # a cap: each adapter's prompt spec holds its own, smaller budget
    max_batch_size: int = Field(8, ge=1)  # queued calls of one model answered in one generation
    max_queued: int = Field(64, ge=1)  # beyond it a call gets 429 (server busy) rather than a long wait
    poll_s: float = Field(30.0, ge=0.0)  # how often resolve() is asked for new adapters; 0: never
    hardware: str = "cpu-2-cores"  # what the cost figure assumes (select.hardware_prices_usd_per_hour's names)
    hourly_cost_usd: float = Field(0.10, ge=0.0)  # that machine's price
    # components/slm/engines.py make_engine: onnxruntime-genai (default; eager answers what it cannot load) |
    # transformers | llama-cpp
    engine: str = DEFAULT_ENGINE
    engine_threads: int | None = Field(None, ge=1)  # the engine's CPU threads (default: every core)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1)  # a larger body gets 413 before it is read


def model_id(cluster_id: int) -> str:
    return f"{MODEL_PREFIX}{cluster_id}"


def cluster_of_model(model: Any) -> int | None:
    """The cluster a model id names, only in its own spelling (``cluster-7``, not ``cluster-007``)."""
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIX):
        return None
    number = model[len(MODEL_PREFIX) :]
    if not number.lstrip("-").isdigit() or model_id(int(number)) != model:
        return None
    return int(number)


def served_from_router_config(config: RouterConfig) -> dict[int, ServedAdapter]:
    """The clusters a router config (reports/router.yaml) sends to an SLM: every mode but ``off`` (a shadow or
    canary cluster needs its SLM's answers too)."""
    return {
        cluster_id: ServedAdapter(serving.base_model, serving.adapter_dir)
        for cluster_id, serving in config.clusters.items()
        if serving.mode != "off"
    }


def gates_from_router_config(config: RouterConfig) -> dict[int, SelectiveGate]:
    """The selective gates of a router config's clusters (calibrator file + threshold), keyed by cluster."""
    return selective_gates(config)


def answer_confidence_object(generation: Any, gate: SelectiveGate | None) -> dict[str, Any] | None:
    """The ``llm2slm`` object of one answer (see the module docstring); None when there is nothing to say (no
    features and no gate)."""
    import math

    features = getattr(generation, "confidence", None)
    if gate is not None:
        return {"features": features, **gate.verdict(features).as_fields(), "calibrated": True}
    if features is None:
        return None
    return {"features": features, "confidence": math.exp(features["mean_logprob"]), "calibrated": False}


def logprobs_object(generation: Any) -> dict[str, Any] | None:
    """OpenAI's ``choices[i].logprobs`` for a generation's tokens; None when the engine gave no log-probabilities."""
    tokens = getattr(generation, "token_logprobs", None)
    if tokens is None:
        return None
    content = [
        {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
        for token, logprob in tokens
    ]
    return {"content": content, "refusal": None}


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": code}})


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()  # one per server: several servers in one process stay apart
        self.requests = Counter(
            "llm2slm_slm_requests", "Chat completion requests", ["model", "status"], registry=self.registry
        )
        self.tokens = Counter(
            "llm2slm_slm_tokens", "Tokens read and written", ["model", "kind"], registry=self.registry
        )
        self.latency = Histogram(
            "llm2slm_slm_request_latency_seconds",
            "Time from a request's arrival to its answer",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "llm2slm_slm_batch_size", "Calls per generation", buckets=(1, 2, 4, 8, 16, 32), registry=self.registry
        )
        self.reloads = Counter(
            "llm2slm_slm_adapter_reloads",
            "Adapter changes from resolve()",
            ["model", "outcome"],
            registry=self.registry,
        )


class SLMServer:
    """The app (``.app``), its worker and its reload poller; see the module docstring."""

    def __init__(
        self,
        served: Mapping[int, ServedAdapter],
        config: SLMServerConfig,
        client_keys: Sequence[str],
        engine: Engine | None = None,
        resolve: Resolve | None = None,
        gates: Mapping[int, SelectiveGate] | None = None,
    ) -> None:
        from components.serve.proxy import PROXY_KEYS_ENV

        if not client_keys:
            raise ValueError(f"the SLM server needs at least one client API key (${PROXY_KEYS_ENV}, comma-separated)")
        self.config = config
        self.engine: Engine = engine or make_engine(config.engine, config.engine_threads)
        self.resolve = resolve
        self.gates: dict[int, SelectiveGate] = dict(gates or {})  # selective clusters' gates (router.yaml)
        self._keys = [key.encode() for key in client_keys]
        self._served: dict[int, ServedAdapter] = dict(served)  # replaced whole, on the worker thread only
        self.reloads: list[dict[int, tuple[ServedAdapter | None, ServedAdapter | None]]] = []  # applied changes
        self._reload_lock = threading.Lock()
        self._failed: dict[int, ServedAdapter] = {}  # cluster -> the target whose load failed (until it changes)
        self._usage: dict[str, dict[str, float]] = {}  # model -> calls, tokens, busy ms: the measured cost
        self.metrics = _Metrics()
        self.worker = BatchWorker(self._run_batch, config.max_batch_size, config.max_queued, name="slm-server")
        self._stop_polling = threading.Event()
        self.started = int(time.time())
        self.app = self._create_app()

    @property
    def served(self) -> dict[int, ServedAdapter]:
        return dict(self._served)

    # ---- the worker thread ----------------------------------------------------------------------------------

    def _run_batch(self, key: Hashable, records: list[CallRecord]) -> list[Any]:
        cluster_id, max_new_tokens = key
        served = self._served.get(cluster_id)
        if served is None:  # dropped by a reload while the call was queued
            raise LookupError(f"{model_id(cluster_id)} is no longer served")
        self.metrics.batch_size.observe(len(records))
        generations = self.engine.generate(served, records, max_new_tokens)
        usage = self._usage.setdefault(model_id(cluster_id), {"calls": 0, "completion_tokens": 0, "busy_ms": 0.0})
        for generation in generations:
            usage["calls"] += 1
            usage["completion_tokens"] += generation.completion_tokens
            usage["busy_ms"] += generation.latency_ms
        return generations

    def _apply(self, wanted: dict[int, ServedAdapter]) -> dict[int, tuple[ServedAdapter | None, ServedAdapter | None]]:
        """Loads what changed, then switches; runs on the worker thread, between batches."""
        current, served, changes = self._served, {}, {}
        for cluster_id, target in wanted.items():
            old = current.get(cluster_id)
            if target == old or (target == self._failed.get(cluster_id) and old is not None):
                served[cluster_id] = old  # unchanged, or a target that already failed: not retried every poll
                continue
            try:
                self.engine.load(target)
            except Exception as error:  # noqa: BLE001 - a broken adapter must not take the served one down
                logger.error(
                    "slm-server: %s keeps its adapter: loading the new one failed: %s", model_id(cluster_id), error
                )
                self.metrics.reloads.labels(model_id(cluster_id), "failed").inc()
                self._failed[cluster_id] = target
                if old is not None:
                    served[cluster_id] = old
                continue
            served[cluster_id] = target
            self._failed.pop(cluster_id, None)
            changes[cluster_id] = (old, target)
            self.metrics.reloads.labels(model_id(cluster_id), "loaded").inc()
        for cluster_id in current.keys() - wanted.keys():
            changes[cluster_id] = (current[cluster_id], None)
            self.metrics.reloads.labels(model_id(cluster_id), "dropped").inc()
        self._served = served
        in_use = set(served.values())
        for old, _ in changes.values():
            if old is not None and old not in in_use:
                self.engine.unload(old)
        if changes:
            self.reloads.append(changes)
            for cluster_id, (old, new) in changes.items():
                logger.info("slm-server: %s: %s -> %s", model_id(cluster_id), old, new)
        return changes

    # ---- reloads ------------------------------------------------------------------------------------------

    def reload(self) -> dict[int, tuple[ServedAdapter | None, ServedAdapter | None]]:
        """Asks ``resolve()`` once and applies what changed (waiting for it); the poller calls this."""
        if self.resolve is None:
            return {}
        with self._reload_lock:
            try:
                wanted = dict(self.resolve())
            except Exception as error:  # noqa: BLE001 - e.g. the registry is down: keep serving what we have
                logger.warning("slm-server: resolving adapters failed, keeping the current ones: %s", error)
                self.metrics.reloads.labels("", "resolve_failed").inc()
                return {}
            if wanted == self._served:
                return {}
            return self.worker.call(lambda: self._apply(wanted)).result()

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.config.poll_s):
            self.reload()

    def close(self) -> None:
        self._stop_polling.set()
        self.worker.close()

    # ---- HTTP ---------------------------------------------------------------------------------------------

    def _refused(self, request: Request) -> JSONResponse | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() == "bearer" and any(hmac.compare_digest(given, key) for key in self._keys):
            return None
        return _error(401, "invalid or missing API key for the llm2slm SLM server", code="invalid_api_key")

    def engine_report(self) -> dict[str, Any]:
        from components.scoring.costs import slm_cost_per_1k_calls

        measured = {}
        for model, usage in sorted(self._usage.items()):
            mean_ms = usage["busy_ms"] / usage["calls"] if usage["calls"] else 0.0
            measured[model] = {
                "calls": int(usage["calls"]),
                "completion_tokens": int(usage["completion_tokens"]),
                "tokens_per_s": usage["completion_tokens"] / (usage["busy_ms"] / 1000) if usage["busy_ms"] else 0.0,
                "mean_engine_ms_per_call": mean_ms,
                "cost_per_1k_calls_usd": slm_cost_per_1k_calls([mean_ms], self.config.hourly_cost_usd),
            }
        return {
            **self.engine.describe(),
            "hardware": self.config.hardware,
            "hourly_cost_usd": self.config.hourly_cost_usd,
            "max_batch_size": self.config.max_batch_size,
            "measured": measured,
        }

    def _create_app(self) -> FastAPI:
        server = self

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            poller = None
            if server.resolve is not None and server.config.poll_s > 0:
                poller = threading.Thread(target=server._poll, name="slm-server-reload", daemon=True)
                poller.start()
            try:
                yield
            finally:
                server.close()
                if poller is not None:
                    poller.join(timeout=5)

        app = FastAPI(title="llm2slm SLM server", lifespan=lifespan)

        @app.get("/healthz")
        async def healthz() -> dict[str, Any]:
            return {
                "status": "ok",
                "models": [model_id(c) for c in sorted(server._served)],
                "queued": server.worker.queued,
            }

        @app.get("/metrics")
        async def metrics() -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @app.get("/v1/models")
        async def models(request: Request) -> Response:
            if (refusal := server._refused(request)) is not None:
                return refusal
            data = [
                {
                    "id": model_id(cluster_id),
                    "object": "model",
                    "created": server.started,
                    "owned_by": "llm2slm",
                    "root": served.adapter_dir or served.base_model,  # as vLLM lists a LoRA module
                    "parent": served.base_model,
                    "engine": server.engine.name,
                    "hardware": server.config.hardware,
                }
                for cluster_id, served in sorted(server._served.items())
            ]
            return JSONResponse({"object": "list", "data": data})

        @app.get("/v1/engine")
        async def engine(request: Request) -> Response:
            if (refusal := server._refused(request)) is not None:
                return refusal
            report = await asyncio.to_thread(server.engine_report)
            return JSONResponse(report)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            if (refusal := server._refused(request)) is not None:
                return refusal
            started = time.perf_counter()
            try:
                body = json.loads(await read_body(request, server.config.max_request_bytes))
            except BodyTooLarge as error:
                server.metrics.requests.labels(UNKNOWN_MODEL, "413").inc()
                return _error(413, str(error), code="request_too_large")
            except ValueError:
                server.metrics.requests.labels(UNKNOWN_MODEL, "400").inc()
                return _error(400, "the request body is not JSON")
            if not isinstance(body, dict):
                server.metrics.requests.labels(UNKNOWN_MODEL, "400").inc()
                return _error(400, "the request body must be a JSON object")
            requested = body.get("model")
            cluster_id = cluster_of_model(requested)
            if cluster_id is None or cluster_id not in server._served:
                server.metrics.requests.labels(UNKNOWN_MODEL, "404").inc()
                served_ids = ", ".join(model_id(c) for c in sorted(server._served)) or "none"
                return _error(
                    404, f"model {requested!r} is not served here (served: {served_ids})", code="model_not_found"
                )
            model = model_id(cluster_id)  # the served id: the only model label the metrics ever get
            rejected, budget = server._check_request(body)
            if rejected:
                server.metrics.requests.labels(model, "400").inc()
                return _error(400, rejected)
            try:
                record = request_record(body)
            except (RecordError, ValueError) as error:
                server.metrics.requests.labels(model, "400").inc()
                return _error(400, f"unreadable request: {error}")
            pending = server.worker.submit((cluster_id, budget), record)
            if pending is None:
                server.metrics.requests.labels(model, "429").inc()
                return _error(429, "the SLM server is busy (queue full); retry shortly", kind="rate_limit_error")
            try:
                generation = await asyncio.wrap_future(pending)
            except Exception as error:  # noqa: BLE001 - answered as the OpenAI error shape
                logger.warning("slm-server: generation for %s failed: %s", model, type(error).__name__)
                server.metrics.requests.labels(model, "500").inc()
                return _error(500, f"generation failed: {type(error).__name__}", kind="server_error")
            from components.slm import parse_completion

            completion = as_completion(parse_completion(generation.text), model)
            extra = answer_confidence_object(generation, server.gates.get(cluster_id))
            if extra is not None:
                completion["llm2slm"] = extra
            if body.get("logprobs") is True:
                completion["choices"][0]["logprobs"] = logprobs_object(generation)
            completion["usage"] = {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            }
            server.metrics.requests.labels(model, "200").inc()
            server.metrics.tokens.labels(model, "prompt").inc(generation.prompt_tokens)
            server.metrics.tokens.labels(model, "completion").inc(generation.completion_tokens)
            server.metrics.latency.labels(model).observe(time.perf_counter() - started)
            if body.get("stream"):
                return Response(completion_as_sse(completion), media_type="text/event-stream")
            return JSONResponse(completion)

        return app

    def _check_request(self, body: dict[str, Any]) -> tuple[str | None, int]:
        """(why the request cannot be served as asked, or None; its token budget)."""
        if body.get("n", 1) not in (1, None):
            return "n > 1 is not supported: decoding is greedy, every choice would be the same", 0
        budget = self.config.max_new_tokens
        for name in ("max_completion_tokens", "max_tokens"):
            asked = body.get(name)
            if asked is None:
                continue
            if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
                return f"{name} must be a positive integer", 0
            budget = min(budget, asked)
        return None, budget
