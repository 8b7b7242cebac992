"""Teacher synthesis (``finetune.synthesis``): verified new training calls for a cluster from the agent's own LLM.

Off unless a teacher endpoint is configured. For a cluster, the teacher (any OpenAI-compatible chat-completions
endpoint: the proxy's upstream) first writes a new user request from a few of the cluster's anonymized training
requests and its tools, then answers it exactly as the agent's LLM is called (the same system prompt and tools). An
example is kept only when the answer is a tool call that parses, names an offered tool, has arguments valid against
its schema and grounded in the request, and the request is not a near-duplicate of a training or held-out request
(held-out requests are used for that check only, never shown to the teacher). Kept examples go through the caller's
anonymizer (S2) before anything else sees them, carry ``metadata.origin = "teacher"``, and every rejection is counted
by reason. A budget in calls and dollars bounds the spend; transient errors are retried with exponential backoff.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.core.config import StepConfig
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.scoring.tool_calls import json_schema_form, tool_parameters

ORIGIN_TEACHER = "teacher"
REQUEST_PROMPT = (
    "Here are requests a user sent to an assistant that can call the tools below.\n\nTools:\n{tools}\n\n"
    "Requests:\n{examples}\n\nWrite ONE new, different, realistic request of the same kind, with concrete values. "
    "Reply with the request text only."
)
RETRIABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}

Progress = Callable[[int, int], None]


class SynthesisSettings(StepConfig):
    enabled: bool = False
    base_url: str | None = None  # OpenAI-compatible, e.g. the proxy's upstream ".../v1"
    model: str | None = None
    api_key_env: str | None = None  # the name of the environment variable holding the key, never the key
    examples_per_cluster: int = 50
    seed_examples: int = 3  # training requests shown to the teacher per new request
    max_calls: int = 200  # teacher calls per cluster at most (two per example: request, answer)
    max_cost_usd: float = 1.0  # per cluster
    price_per_1m_input_tokens: float = 0.15
    price_per_1m_output_tokens: float = 0.60
    near_duplicate_jaccard: float = 0.8  # word-set similarity at which a request counts as a copy
    max_retries: int = 3
    timeout_s: float = 60.0
    seed: int = 0


@dataclass
class SynthesisReport:
    calls: int = 0
    cost_usd: float = 0.0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    stopped_by: str | None = None  # "calls budget" / "cost budget" when a budget ended the cluster early

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "cost_usd": round(self.cost_usd, 6),
            "kept": self.kept,
            "rejected": dict(self.rejected),
            "stopped_by": self.stopped_by,
        }


class TeacherError(RuntimeError):
    """The teacher endpoint failed after its retries (or refused the request outright)."""


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _grounded(value: Any, request: str) -> bool:
    """Strings and numbers must be stated in the request; booleans, containers and enum-like short words pass."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, list | dict):
        items = value if isinstance(value, list) else value.values()
        return all(_grounded(item, request) for item in items)
    rendered = value if isinstance(value, str) else json.dumps(value)
    return rendered.lower() in request.lower()


class Teacher:
    """A minimal chat-completions client with retries, backoff and cost accounting."""

    def __init__(
        self, settings: SynthesisSettings, report: SynthesisReport, sleep: Callable[[float], None] = time.sleep
    ):
        import httpx

        if not settings.base_url or not settings.model:
            raise ValueError("finetune.synthesis needs base_url and model when enabled")
        key = os.environ.get(settings.api_key_env, "") if settings.api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=settings.base_url.rstrip("/"), headers=headers, timeout=settings.timeout_s)
        self._settings, self._report, self._sleep = settings, report, sleep

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        import httpx

        body: dict[str, Any] = {"model": self._settings.model, "messages": messages}
        if tools:
            body["tools"] = tools
        for attempt in range(self._settings.max_retries + 1):
            try:
                response = self._client.post("/chat/completions", json=body)
            except httpx.TransportError as error:
                failure = f"transport error: {type(error).__name__}"
            else:
                if response.status_code == 200:
                    return self._account(response.json())
                if response.status_code not in RETRIABLE_STATUS:
                    raise TeacherError(f"teacher answered HTTP {response.status_code}")
                failure = f"HTTP {response.status_code}"
            if attempt < self._settings.max_retries:
                self._sleep(min(2**attempt, 30) * 0.5)
        raise TeacherError(f"teacher failed after {self._settings.max_retries + 1} attempts ({failure})")

    def _account(self, completion: dict[str, Any]) -> dict[str, Any]:
        usage = completion.get("usage") or {}
        self._report.calls += 1
        self._report.cost_usd += (usage.get("prompt_tokens") or 0) * self._settings.price_per_1m_input_tokens / 1e6
        self._report.cost_usd += (usage.get("completion_tokens") or 0) * self._settings.price_per_1m_output_tokens / 1e6
        return completion

    def close(self) -> None:
        self._client.close()


def _message(completion: dict[str, Any]) -> dict[str, Any]:
    choices = completion.get("choices") or [{}]
    return choices[0].get("message") or {}


def _verified_call(message: dict[str, Any], tools: list[dict[str, Any]], request: str) -> tuple[list[ToolCall], str]:
    """The answer's tool calls, or the reason to reject it."""
    import jsonschema

    raw_calls = message.get("tool_calls") or []
    if not raw_calls:
        return [], "answer is not a tool call"
    parameters = tool_parameters(tools)
    calls = []
    for raw in raw_calls:
        function = raw.get("function") or {}
        name, arguments_text = function.get("name"), function.get("arguments") or "{}"
        try:
            arguments = json.loads(arguments_text)
        except json.JSONDecodeError:
            return [], "arguments are not valid JSON"
        if not isinstance(arguments, dict):
            return [], "arguments are not valid JSON"
        if name not in parameters:
            return [], "tool not offered"
        schema = json_schema_form(parameters[name] or {"type": "object"})
        if not jsonschema.Draft202012Validator(schema).is_valid(arguments):
            return [], "arguments fail the tool schema"
        if not all(_grounded(value, request) for value in arguments.values()):
            return [], "argument value not grounded in the request"
        calls.append(ToolCall(name=name, arguments=json.dumps(arguments)))
    return calls, ""


def synthesize(
    train: Sequence[CallRecord],
    held_out_requests: Sequence[str],
    settings: SynthesisSettings,
    anonymize: Callable[[list[CallRecord]], list[CallRecord]],
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[CallRecord], SynthesisReport]:
    """New verified training calls for one cluster (``train``: its anonymized training calls)."""
    report = SynthesisReport()
    seeds = [r for r in train if r.response.tool_calls and r.user_request]
    if not settings.enabled or not seeds:
        return [], report
    teacher = Teacher(settings, report, sleep)
    rng = random.Random(settings.seed)
    known = [_words(r.user_request) for r in train] + [_words(t) for t in held_out_requests]
    kept: list[CallRecord] = []
    attempt = 0
    try:
        while len(kept) < settings.examples_per_cluster:
            if report.calls + 2 > settings.max_calls:
                report.stopped_by = "calls budget"
                break
            if report.cost_usd >= settings.max_cost_usd:
                report.stopped_by = "cost budget"
                break
            attempt += 1
            shown = rng.sample(seeds, min(settings.seed_examples, len(seeds)))
            template = shown[0]
            tools_text = "\n".join(json.dumps(t.get("function", t)) for t in template.tools)
            examples = "\n".join(f"- {r.user_request}" for r in shown)
            prompt = REQUEST_PROMPT.format(tools=tools_text, examples=examples)
            request = (_message(teacher.chat([{"role": "user", "content": prompt}])).get("content") or "").strip()
            if not request:
                report.rejected["empty request"] += 1
                continue
            words = _words(request)
            if any(_jaccard(words, other) >= settings.near_duplicate_jaccard for other in known):
                report.rejected["near-duplicate of a training or held-out request"] += 1
                continue
            system = [m.model_dump(exclude_none=True) for m in template.messages if m.role in ("system", "developer")]
            answer = _message(teacher.chat([*system, {"role": "user", "content": request}], template.tools))
            calls, reason = _verified_call(answer, template.tools, request)
            if reason:
                report.rejected[reason] += 1
                continue
            known.append(words)
            kept.append(
                template.model_copy(
                    update={
                        "record_id": f"teacher-{template.record_id}-{attempt}",
                        "messages": [
                            *[m for m in template.messages if m.role in ("system", "developer")],
                            ChatMessage(role="user", content=request),
                        ],
                        "response": ChatMessage(role="assistant", tool_calls=calls),
                        "metadata": {"origin": ORIGIN_TEACHER},
                        "cost_usd": None,
                        "prompt_tokens": None,
                        "completion_tokens": None,
                        "latency_ms": None,
                    }
                )
            )
            if progress is not None:
                progress(len(kept), settings.examples_per_cluster)
    finally:
        teacher.close()
    anonymized = anonymize(kept) if kept else []
    report.kept = len(anonymized)
    return anonymized, report
