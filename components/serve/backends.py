"""Where a routed cluster's SLM runs: ``embedded`` (the router's in-process pool) or any OpenAI-compatible server
(``{base_url, model}``: ``llm2slm serve-slm``, vLLM with ``--lora-modules``, ...).

A remote backend is one more :data:`components.serve.service.Generator`: each record of a batch is sent as a chat
completion (concurrently, so the server can batch them), and each answer comes back as the completion text the
embedded pool would have produced (``<tool_call>`` lines, components/slm's format), with the confidence features
serve-slm sends (``llm2slm.features``), so the router's guardrail, shadow, canary and selective logic run unchanged
on it. A failing server raises: the router then sends the call to the LLM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from components.core.router_file import Backend, OpenAIBackend
from components.core.schema import CallRecord, ChatMessage
from components.slm.confidence import features_from
from components.slm.generation import GENERATION_ENGINE, Generation


def backend_name(backend: Backend) -> str:
    """How reports name where a cluster's SLM ran: the in-process engine, or the server's URL and model id."""
    if isinstance(backend, OpenAIBackend):
        return f"{backend.base_url} ({backend.model})"
    return f"embedded ({GENERATION_ENGINE})"


# (cluster id, records of one batch) -> answers (texts or generations), in order (components.serve.service.Generator).
Generator = Callable[[int, list[CallRecord]], list[Any]]


def openai_message(message: ChatMessage) -> dict[str, Any]:
    """A message in the OpenAI request form (the inverse of collect's ``message_from_openai``)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id or f"call_{index}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for index, call in enumerate(message.tool_calls)
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def chat_request(record: CallRecord, model: str, max_new_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [openai_message(message) for message in record.messages],
        "max_tokens": max_new_tokens,
        "temperature": 0,  # the embedded path decodes greedily
    }
    if record.tools:
        body["tools"] = record.tools
    return body


def completion_text(completion: dict[str, Any]) -> str:
    """The answer of a ``chat.completion`` as components/slm's completion text (tool calls as ``<tool_call>``)."""
    from components.collect.sources.common import message_from_openai
    from components.slm import render_target

    choices = completion.get("choices") or []
    if not choices:
        raise ValueError("the SLM server answered without a choice")
    return render_target(message_from_openai(choices[0].get("message"), "choices[0].message"))


class OpenAIGenerator:
    """Answers a cluster's batches through one OpenAI-compatible endpoint."""

    def __init__(self, backend: OpenAIBackend, max_new_tokens: int, max_parallel: int = 8) -> None:
        import httpx

        headers = {"content-type": "application/json"}
        if backend.api_key_env is not None:
            key = os.environ.get(backend.api_key_env)
            if not key:
                raise ValueError(f"the SLM backend {backend.base_url} needs its key in ${backend.api_key_env}")
            headers["authorization"] = f"Bearer {key}"
        self.backend, self.max_new_tokens = backend, max_new_tokens
        self._client = httpx.Client(base_url=backend.base_url.rstrip("/"), headers=headers, timeout=backend.timeout_s)
        self._senders = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="slm-backend")

    def _answer(self, record: CallRecord) -> Generation:
        began = time.perf_counter()
        response = self._client.post(
            "/chat/completions", json=chat_request(record, self.backend.model, self.max_new_tokens)
        )
        response.raise_for_status()
        completion = response.json()
        usage = completion.get("usage") or {}
        extra = completion.get("llm2slm")
        return Generation(
            text=completion_text(completion),
            latency_ms=(time.perf_counter() - began) * 1000,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            # serve-slm sends its answer's confidence features: the router's own calibrator scores them.
            confidence=features_from(extra.get("features")) if isinstance(extra, dict) else None,
        )

    def __call__(self, records: list[CallRecord]) -> list[Generation]:
        return list(self._senders.map(self._answer, records))

    def close(self) -> None:
        self._senders.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def cluster_generator(
    backends: Mapping[int, Backend], embedded: Generator, max_new_tokens: int, max_parallel: int = 8
) -> Generator:
    """The router's generator: each cluster's batches go to its backend (``embedded`` ones to ``embedded``)."""
    remote = {
        cluster_id: OpenAIGenerator(backend, max_new_tokens, max_parallel)
        for cluster_id, backend in backends.items()
        if isinstance(backend, OpenAIBackend)
    }
    if not remote:
        return embedded

    def generate(cluster_id: int, records: list[CallRecord]) -> list[str]:
        if cluster_id in remote:
            return remote[cluster_id](records)
        return embedded(cluster_id, records)

    return generate
