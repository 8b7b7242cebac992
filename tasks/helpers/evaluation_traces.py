"""Each held-out call of an evaluation as an MLflow trace of the active run, so the run's Traces tab lists the calls
and filters them: by tag (``cluster_id``, ``llm2slm.outcome`` = match/miss/partial, ``llm2slm.route`` = slm/llm)
or by assessment (the fine-tuned SLM's ``full_call_match`` false, say). A trace holds the anonymized request (its
input), the fine-tuned SLM's answer (its output), one span per SLM with its answer and latency (and the
confidence features of the fine-tuned one), the LLM's answer as the ``expected_response`` expectation and one
feedback per metric (components/evaluate/call_traces.py builds them).

Bounded: ``evaluate.max_traces`` caps the count; traces are exported in the background and flushed before their
assessments are logged (about 0.2-0.3 s per call on 2 cores, benchmarks/trace_logging.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import mlflow
from mlflow.entities import AssessmentSource, AssessmentSourceType, SpanType

from components.evaluate.call_traces import SYSTEMS, CallTrace

TRACE_NAME = "held-out call"
EXPECTATION = "expected_response"
SCORER = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="llm2slm.scoring")
LLM_LOG = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="llm2slm.llm_log")


def _start_trace(call: CallTrace, start_ns: int) -> str:
    """The trace's spans: the root (request in, fine-tuned answer out) and one child per SLM, each as long as its
    measured latency, one after the other."""
    root = mlflow.start_span_no_context(
        name=TRACE_NAME,
        span_type=SpanType.CHAIN,
        inputs={"request": call.request},
        attributes={"cluster_id": call.cluster_id, "record_id": call.record_id, "route": call.route},
        tags=call.tags,
        start_time_ns=start_ns,
    )
    at = start_ns
    for system in SYSTEMS:
        attributes: dict = {"latency_ms": call.latency_ms[system]}
        if system == "slm_finetuned":
            attributes |= {f"confidence.{name}": value for name, value in call.features.items()}
            if call.confidence is not None:
                attributes["confidence.calibrated"] = call.confidence
        span = mlflow.start_span_no_context(
            name=system,
            span_type=SpanType.LLM,
            parent_span=root,
            inputs={"request": call.request},
            attributes=attributes,
            start_time_ns=at,
        )
        at += int(call.latency_ms[system] * 1e6)
        span.end(outputs={"answer": call.answers[system]}, end_time_ns=at)
    root.end(outputs=call.answers["slm_finetuned"], end_time_ns=at)
    return root.trace_id


def _assess(trace_id: str, call: CallTrace) -> None:
    mlflow.log_expectation(trace_id=trace_id, name=EXPECTATION, value=call.expected, source=LLM_LOG)
    for name, value in call.feedback.items():
        mlflow.log_feedback(trace_id=trace_id, name=name, value=value, source=SCORER)
    if call.confidence is not None:
        mlflow.log_feedback(
            trace_id=trace_id,
            name="confidence",
            value=call.confidence,
            source=SCORER,
            rationale=f"the shipped gate's calibrated confidence; the call goes to the {call.route.upper()}",
        )


def log_call_traces(calls: Sequence[CallTrace], total: int | None = None) -> list[str]:
    """One trace per call in the active run's experiment (linked to the run), with its assessments; the run gets
    the tag ``llm2slm.traces`` = "<logged> of <total> held-out calls". Returns the trace ids."""
    total = len(calls) if total is None else total
    mlflow.set_tag("llm2slm.traces", f"{len(calls)} of {total} held-out calls")
    if not calls:
        return []
    start_ns = time.time_ns()
    trace_ids = [_start_trace(call, start_ns) for call in calls]
    mlflow.flush_trace_async_logging()  # the assessments need their traces stored
    for trace_id, call in zip(trace_ids, calls):
        _assess(trace_id, call)
    return trace_ids
