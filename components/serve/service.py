"""S6 router as a proxy responder: each chat completion is placed in a task cluster and answered by that
cluster's SLM when its route allows it, else by the upstream LLM.

Per call: the request becomes a :class:`CallRecord`, is embedded and assigned to a cluster (S3's
:func:`components.discover.identity.assign`, against the saved cluster model), and :func:`components.serve.router.decide`
picks the route. ``slm``: the cluster's SLM generates, its answer is parsed and checked against the request's tool
schemas; a valid answer goes back as a ``chat.completion``, an invalid one falls
back to the LLM (route ``fallback``). ``shadow``: the LLM answers while the SLM runs beside it, and whether the two
agree is recorded once the LLM's answer is in. ``selective``: the cluster's SLM answers first and its answer's
calibrated confidence (components/slm/confidence.py :class:`SelectiveGate`, the gate's own calibrator and
formula) decides: at or above the cluster's threshold the SLM's answer is sent (route ``slm``, decision ``accept``),
below it, without a confidence or when the SLM failed, the call goes on to the LLM (route ``llm``, decision
``defer``); the SLM's time (``latency_ms``) is recorded either way, since a deferral adds it to the call. Each call's
route, cluster, reason (agreement, confidence, threshold, decision) become the stored call's ``metadata.route``
through :func:`components.serve.proxy.current_note`; no prompt text is ever logged. A deferred call's record carries
``metadata.origin`` ``deferred`` (the refresh trains on what the SLM did not know).

Audit and demotion (components/serve/audit.py): a share of the calls an ``on`` or ``selective`` SLM keeps is also
answered by the LLM after the agent got the SLM's answer; the stored call holds the LLM's answer (origin
``audited``) and ``route.audit`` (``match``/``miss``). When a cluster's audited calls fail the gate's rule
(components/evaluate/demotion.py) the router serves it as ``shadow`` from its next call and logs the demotion in
``promotions_log``; the refresh's task moves the registry alias.

Serving: one worker thread runs the SLMs (:class:`components.slm.adapter_pool.SLMPool`: one copy of each base model, each
cluster's LoRA adapter loaded onto it once and switched per batch). Calls for the same cluster that queue up while
it is busy are answered together in one batch (up to ``max_batch_size``), so a burst costs one generation, not many.

Streaming requests are left to the LLM: the SLM answers only non-streaming calls, so a streaming agent sees no
change in behaviour. A failure inside the router (embedding, cluster model) sends the call to the LLM too: the
router may lose savings, never the agent's call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.collect.sources.common import RecordError, request_record
from components.core.router_file import RouterFile
from components.core.schema import CallRecord, ChatMessage
from components.discover.identity import ClusterModel, assign, load_model
from components.evaluate.demotion import demoted_since, read_log
from components.evaluate.promotion import PromotionPolicy
from components.serve.audit import AuditSampler, AuditStream
from components.serve.backends import backend_name, cluster_generator
from components.serve.proxy import current_note
from components.serve.router import ClusterRoute, agreement, check_tool_calls, decide
from components.slm.confidence import SelectiveGate, Verdict

logger = logging.getLogger(__name__)

# (texts, model_ref) -> unit embeddings, one row per text: what assign() embeds with.
Embed = Callable[[list[str], str], np.ndarray]
# (cluster_id, records of one batch) -> the SLM's answers, in order: raw completion texts, or generations
# (components.slm.Generation: ``text`` and ``confidence`` features) when the engine measures its confidence; the
# default is the SLM pool.
Generator = Callable[[int, list[CallRecord]], list[Any]]


def answer_parts(answer: Any) -> tuple[str, dict[str, float] | None]:
    """(completion text, confidence features or None) of one generator answer (a text or a generation)."""
    if isinstance(answer, str):
        return answer, None
    return answer.text, getattr(answer, "confidence", None)


class RouterConfig(RouterFile):
    """reports/router.yaml (components/core/router_file.py) with the routing table the router decides from."""

    def routes(self) -> dict[int, ClusterRoute]:
        return {cid: ClusterRoute(c.mode, frozenset(c.known_tools), c.canary_share) for cid, c in self.clusters.items()}


def load_router_config(path: Path) -> RouterConfig:
    """The router's YAML file: either the config itself or a params file with a ``route`` section."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    return RouterConfig.model_validate(data.get("route", data) if isinstance(data, dict) else data)


def call_key(request_body: dict[str, Any]) -> str:
    """A stable key of the request's content, for the seeded canary draw."""
    canonical = json.dumps({k: request_body.get(k) for k in ("messages", "tools")}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def as_completion(message: ChatMessage, model: str) -> dict[str, Any]:
    tool_calls = [
        {
            "id": call.id or f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in message.tool_calls
    ]
    return {
        "id": f"chatcmpl-slm-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "message": {
                    "role": "assistant",
                    "content": message.content,
                    **({"tool_calls": tool_calls} if tool_calls else {}),
                },
            }
        ],
    }


class TextEncoder:
    """The sentence model, loaded once, with a bounded memo: system prompts and tool sets repeat on every call of a
    cluster, so most parts of a call are embedded once per process rather than once per call."""

    def __init__(self, memo_size: int = 4096) -> None:
        self._models: dict[str, Any] = {}
        self._memo: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._memo_size = memo_size

    def __call__(self, texts: list[str], model_ref: str) -> np.ndarray:
        from components.discover.embeddings import encode_texts, load_sentence_model

        missing = [text for text in dict.fromkeys(texts) if (model_ref, text) not in self._memo]
        if missing:
            if model_ref not in self._models:
                self._models[model_ref] = load_sentence_model(model_ref)
            for text, vector in zip(missing, encode_texts(self._models[model_ref], missing)):
                self._memo[(model_ref, text)] = vector
        rows = []
        for text in texts:
            self._memo.move_to_end((model_ref, text))
            rows.append(self._memo[(model_ref, text)])
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return np.asarray(rows, dtype=np.float32)


@dataclass
class _SLMJob:
    cluster_id: int
    record: CallRecord
    request_body: dict[str, Any]
    # -> (the SLM's parsed message, the guardrail's reason to reject it or None, its confidence features or None)
    answer: Future


def selective_gates(config: RouterConfig) -> dict[int, SelectiveGate]:
    """The gate of each ``selective`` cluster: its calibrator file with router.yaml's threshold. A selective
    cluster without a calibrator file cannot be scored: refused at start rather than deferring every call."""
    gates = {}
    for cluster_id, serving in config.clusters.items():
        if serving.mode != "selective":
            continue
        if not serving.calibrator:
            raise ValueError(f"cluster {cluster_id} is selective but names no calibrator (S6's gate file)")
        gates[cluster_id] = SelectiveGate.load(serving.calibrator, serving.threshold)
    return gates


class RouterResponder:
    """A proxy responder serving routed clusters with their SLMs (see the module docstring)."""

    name = "router"

    def __init__(
        self,
        config: RouterConfig,
        cluster_model: ClusterModel | Path | None = None,
        embed: Embed | None = None,
        generator: Generator | None = None,
    ) -> None:
        from components.slm.adapter_pool import SLMPool

        self.config = config
        self.routes = config.routes()
        self.gates = selective_gates(config)
        model = cluster_model if cluster_model is not None else Path(config.cluster_model_dir)
        self.cluster_model = model if isinstance(model, ClusterModel) else load_model(Path(model))
        self.embed = embed or TextEncoder()
        self.pool = SLMPool()
        backends = {cluster_id: serving.backend for cluster_id, serving in config.clusters.items()}
        # Recorded with each SLM route, so the route report says which engine its latencies (and costs) come from.
        self.backend_names = {
            cluster_id: backend_name(serving.backend) for cluster_id, serving in config.clusters.items()
        }
        self.generator = generator or cluster_generator(backends, self.generate_with_slm, config.max_new_tokens)
        # Placement runs off the event loop: the proxy keeps serving the LLM path meanwhile.
        self._assigner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-assign")
        # One SLM thread with its own queue, so that queued calls of one cluster can be taken as one batch.
        self._jobs: deque[_SLMJob] = deque()
        self._jobs_changed = threading.Condition()
        self._closed = False
        self._queued = 0  # submitted and not answered yet (queued or generating)
        self.batch_sizes: list[int] = []  # of each generation, for tests and the benchmark
        self._demoting = threading.Lock()
        self.audits = AuditStream(
            AuditSampler(config.audit_share, config.audit_min_per_day, config.seed),
            PromotionPolicy(**config.demotion.model_dump()),
            Path(config.promotions_log),
            self._demote,
        )
        for cluster_id in demoted_since(read_log(Path(config.promotions_log)), config.written_at):
            if self._demote(cluster_id):  # a restart does not undo a demotion the refresh has not acted on yet
                logger.warning("router: cluster %s starts in shadow: demoted since its config was written", cluster_id)
        self._slm_thread = threading.Thread(target=self._serve_slm_jobs, name="router-slm", daemon=True)
        self._slm_thread.start()

    def cluster_of(self, record: CallRecord) -> int:
        return int(assign([record], self.cluster_model, embed=self.embed).cluster_id.iloc[0])

    def generate_with_slm(self, cluster_id: int, records: list[CallRecord]) -> list[Any]:
        serving = self.config.clusters[cluster_id]
        return self.pool.generations(serving.base_model, serving.adapter_dir, records, self.config.max_new_tokens)

    def _answer_batch(self, cluster_id: int, jobs: list[_SLMJob]) -> None:
        """Generates for the batch, then parses and checks each answer against its own request's tools."""
        from components.slm import parse_completion

        try:
            texts = self.generator(cluster_id, [job.record for job in jobs])
        except Exception as error:  # noqa: BLE001 - a failing SLM must never fail the agent's call
            logger.warning("router: SLM of cluster %s failed: %s", cluster_id, type(error).__name__)
            for job in jobs:
                job.answer.set_result((ChatMessage(role="assistant"), f"SLM error: {type(error).__name__}", None))
            return
        for job, answer in zip(jobs, texts, strict=True):
            text, confidence = answer_parts(answer)
            message = parse_completion(text)
            job.answer.set_result((message, check_tool_calls(message, job.request_body), confidence))

    async def __call__(self, request_body: dict[str, Any], agent: str) -> dict[str, Any] | None:
        note = current_note()
        if request_body.get("stream"):
            note.fields["route"] = {"route": "llm", "cluster_id": None, "reason": "streaming request"}
            return None
        try:
            record = request_record(request_body, agent)
            cluster_id = await asyncio.wrap_future(self._assigner.submit(self.cluster_of, record))
        except (RecordError, ValueError) as error:
            note.fields["route"] = {
                "route": "llm",
                "cluster_id": None,
                "reason": f"unreadable request: {type(error).__name__}",
            }
            return None
        except Exception as error:  # noqa: BLE001 - e.g. the embedding model failed: the LLM still answers
            logger.exception("router: could not place a call")
            note.fields["route"] = {
                "route": "llm",
                "cluster_id": None,
                "reason": f"router error: {type(error).__name__}",
            }
            return None
        decision = decide(cluster_id, request_body, self.routes, call_key(request_body), self.config.seed)
        route: dict[str, Any] = {"route": decision.route, "cluster_id": cluster_id, "reason": decision.reason}
        note.fields["route"] = route
        if decision.route == "llm":
            return None
        pending = self._submit(cluster_id, record, request_body)
        if pending is None:
            if decision.route == "slm":
                route["route"] = "llm"
            route["reason"] = "SLM busy"
            return None
        route["backend"] = self.backend_names.get(cluster_id, backend_name("embedded"))
        if decision.route == "shadow":
            note.on_llm_answer = lambda llm_answer: self._compare(pending, llm_answer, route)
            return None
        began = time.perf_counter()
        message, rejected, confidence = await asyncio.wrap_future(pending)
        gate = self.gates.get(cluster_id)
        if gate is not None:
            route["latency_ms"] = round((time.perf_counter() - began) * 1000, 1)
            if not self._gate_accepts(gate, rejected, confidence, route):
                note.fields["origin"] = "deferred"  # the LLM answers what the SLM was not sure of: S5 learns it
                return None
        if rejected:
            route.update(route="fallback", reason=rejected)
            logger.info("router: cluster %s falls back to the LLM: %s", cluster_id, rejected)
            return None
        if self.routes[cluster_id].mode in ("on", "selective") and self.audits.sampler.pick(cluster_id):
            note.audit = True
            note.on_llm_answer = lambda llm_answer: self.audits.score(cluster_id, message, llm_answer, note.fields)
        return as_completion(message, f"slm-cluster-{cluster_id}")

    def _demote(self, cluster_id: int) -> str | None:
        """Serve the cluster as ``shadow`` from its next call (the audit stream's decision); its mode before, or
        None when it was no longer ``on`` or ``selective`` (a concurrent audit demoted it already)."""
        with self._demoting:
            current = self.routes.get(cluster_id)
            if current is None or current.mode not in ("on", "selective"):
                return None
            self.routes = {**self.routes, cluster_id: replace(current, mode="shadow")}
            return current.mode

    @staticmethod
    def _gate_accepts(
        gate: SelectiveGate, rejected: str | None, confidence: dict[str, float] | None, route: dict[str, Any]
    ) -> bool:
        """A selective cluster's gate on one SLM answer; writes the verdict into the call's route. A failed SLM
        is a deferral too: the LLM answers (the guardrail's own rejections stay ``fallback``)."""
        if rejected is not None and rejected.startswith("SLM error"):
            route.update(Verdict(None, gate.threshold, "defer").as_fields(), route="llm", reason=rejected)
            return False
        verdict = gate.verdict(confidence)
        route.update(verdict.as_fields())
        if verdict.accepted:
            route["reason"] = "confidence at or above threshold"
            return True
        reason = "no confidence from the SLM" if verdict.confidence is None else "confidence below threshold"
        route.update(route="llm", reason=reason)
        return False

    def _submit(self, cluster_id: int, record: CallRecord, request_body: dict[str, Any]) -> Future | None:
        """Queues the call for the SLM thread; None when ``max_queued`` calls are already waiting or running."""
        with self._jobs_changed:
            if self._queued >= self.config.max_queued or self._closed:
                return None
            self._queued += 1
            job = _SLMJob(cluster_id, record, request_body, Future())
            self._jobs.append(job)
            self._jobs_changed.notify()
        return job.answer

    def _next_batch(self) -> list[_SLMJob]:
        """The oldest queued call and the other queued calls of its cluster (the rest keep their order)."""
        with self._jobs_changed:
            while not self._jobs and not self._closed:
                self._jobs_changed.wait()
            if not self._jobs:
                return []
            batch, others = [self._jobs.popleft()], deque()
            while self._jobs and len(batch) < self.config.max_batch_size:
                job = self._jobs.popleft()
                (batch if job.cluster_id == batch[0].cluster_id else others).append(job)
            others.extend(self._jobs)
            self._jobs = others
            return batch

    def _serve_slm_jobs(self) -> None:
        while batch := self._next_batch():
            self.batch_sizes.append(len(batch))
            try:
                self._answer_batch(batch[0].cluster_id, batch)
            except Exception as error:  # noqa: BLE001 - the thread must survive any one batch
                logger.exception("router: SLM batch failed")
                for job in batch:
                    if not job.answer.done():
                        job.answer.set_result(
                            (ChatMessage(role="assistant"), f"SLM error: {type(error).__name__}", None)
                        )
            with self._jobs_changed:
                self._queued -= len(batch)

    def _compare(self, pending: Future, llm_answer: ChatMessage, route: dict[str, Any]) -> None:
        # Runs in the proxy's writer thread once the LLM has answered: the agent never waited for the SLM.
        try:
            message, rejected, _ = pending.result(timeout=self.config.shadow_timeout_s)
        except TimeoutError:
            route["slm_rejected"] = "SLM timed out"
            return
        except CancelledError:  # the router was closed before the SLM got to it
            route["slm_rejected"] = "router closed"
            return
        route["agree"] = False if rejected else agreement(message, llm_answer)
        if rejected:
            route["slm_rejected"] = rejected

    def close(self) -> None:
        self._assigner.shutdown(wait=False, cancel_futures=True)
        with self._jobs_changed:
            self._closed = True
            for job in self._jobs:
                job.answer.cancel()
            self._jobs.clear()
            self._jobs_changed.notify_all()
