"""What logging S6's held-out calls as MLflow traces costs: ``--calls`` synthetic per-call rows (the shape
components/evaluate/entry.py writes, a selective cluster so each trace also carries its confidence) go through
``call_traces`` and ``log_call_traces`` into a fresh SQLite store, inside a run as in the evaluate task. Prints the
seconds for the spans (exported in the background, then flushed) and the assessments, and per call.

    python benchmarks/trace_logging.py [--calls 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.evaluate.call_traces import call_traces  # noqa: E402
from tasks.helpers.evaluation_traces import log_call_traces  # noqa: E402
from tasks.helpers.tracking import TrackingConfig, configure_tracking  # noqa: E402

METRICS = ("function_name_accuracy", "argument_accuracy", "full_call_match", "valid_json", "schema_valid")
CALIBRATOR = {"features": ["mean_logprob"], "coefficients": [4.0], "intercept": 1.0}


def rows(n: int) -> list[dict]:
    answer = '<tool_call>{"name": "get_weather", "arguments": {"city": "<LOCATION_1>"}}</tool_call>'
    return [
        {
            "record_id": f"r{i}",
            "cluster_id": i % 3,
            "conversation_id": f"c{i}",
            "request": f"What is the weather in <LOCATION_1> on day {i}?",
            "llm": answer,
            "slm_base": "I cannot help with that.",
            "slm_finetuned": answer if i % 2 else "no",
            "slm_base.latency_ms": 800.0,
            "slm_finetuned.latency_ms": 650.0,
            **{f"slm_base.{m}": 0.0 for m in METRICS},
            **{f"slm_finetuned.{m}": float(i % 2) for m in METRICS},
            "slm_finetuned.mean_logprob": -0.05 * (i % 7),
            "slm_finetuned.min_logprob": -0.5,
            "slm_finetuned.name_logprob": -0.01,
            "slm_finetuned.value_logprob": -0.2,
        }
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    import mlflow

    entries = [
        {
            "cluster_id": c,
            "primary_metric": "full_call_match",
            "promoted": False,
            "mode": "selective",
            "selective": {"calibrator": CALIBRATOR, "threshold": 0.6},
        }
        for c in range(3)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        configure_tracking(Path(tmp), TrackingConfig(experiment="trace-logging"))
        with mlflow.start_run():
            start = time.perf_counter()
            calls = call_traces(entries, rows(args.calls), max_traces=args.calls)
            trace_ids = log_call_traces(calls)
            seconds = time.perf_counter() - start
        stored = len(mlflow.search_traces(locations=[mlflow.get_experiment_by_name("trace-logging").experiment_id]))
    assessments = sum(len(c.feedback) + 1 + (c.confidence is not None) for c in calls)
    print(
        f"{len(trace_ids)} traces ({stored} stored, {assessments} assessments) in {seconds:.1f} s: "
        f"{seconds / max(1, len(trace_ids)):.2f} s per call"
    )


if __name__ == "__main__":
    main()
