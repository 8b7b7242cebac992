"""S6 task: compare the LLM, the base SLM and the fine-tuned SLM on each cluster's held-out calls, gate the
promotion, register the fine-tuned model with an alias, and write the evaluation table and report. Beside the
figures, the run holds one row per held-out call (an MLflow table), up to ``max_traces`` of them as traces with
their assessments, and its data as MLflow datasets; with
``learning_curve.enabled``, each cluster below parity is retrained on shares of its calls (S5's ``finetune``)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.collect.sources.common import content_hash
from components.core.clusters import registered_name
from components.core.config import resolve
from components.core.schema import CallRecord, read_records, split_records, write_table
from components.evaluate.call_traces import call_traces
from components.evaluate.entry import evaluate_cluster, score_answers
from components.evaluate.evaluation import EvaluateConfig, write_markdown_summary, write_report
from components.evaluate.learning_curve import CurvePoint, below_parity, learning_curve
from components.evaluate.router_config import (
    offered_tools,
    route_mode,
    router_config,
    write_router_config,
    write_selective_gate,
)
from components.evaluate.summary import CollectedCall, run_summary
from components.finetune.train import config_for_cluster, finetune
from components.scoring.costs import cost_basis
from components.slm.generation import GENERATION_ENGINE, generate_answers
from tasks.helpers.evaluation_log import log_evaluation_inputs, log_per_call_results
from tasks.helpers.evaluation_traces import log_call_traces
from tasks.helpers.progress import Progress, say
from tasks.helpers.registry import CHALLENGER, CHAMPION, register_challenger
from tasks.helpers.retries import retry_on_transient_io
from tasks.helpers.tracking import TrackingConfig, log_json_artifact, log_numeric_metrics, step_run


def metrics_view(entries: list[dict]) -> dict:
    """The evaluation figures keyed by cluster (DVC metrics want mappings, not lists)."""
    return {
        f"cluster_{e['cluster_id']}": {
            "scores": e["scores"],
            "cost_per_1k_calls": e["cost_per_1k_calls"],
            "latency_ms_p50": e["latency_ms_p50"],
            "promoted": e["promoted"],
            "selective": {
                key: (e.get("selective") or {}).get(key) for key in ("coverage", "accepted_accuracy", "threshold")
            },
        }
        for e in entries
    }


def cluster_learning_curve(
    cfg: EvaluateConfig,
    workdir: Path,
    cluster: dict,
    train_records: list[CallRecord],
    test_records: list[CallRecord],
    entry: dict,
) -> dict:
    """The cluster's learning curve: each smaller share trained as S5 trains (its settings, overrides included) and
    scored on the same held-out calls; the full share is the adapter S5 trained, as S6 just scored it."""
    cluster_id, metric = cluster["cluster_id"], entry["primary_metric"]
    folder = resolve(workdir, cfg.learning_curve.output_dir) / f"cluster_{cluster_id}"
    training = config_for_cluster(cfg.finetune, cluster_id)

    def train_and_score(subset: list[CallRecord]) -> CurvePoint:
        say(f"S6 evaluate: cluster #{cluster_id}: learning curve, training on {len(subset)} calls")
        result = finetune(cluster["selected_ref"], subset, training, folder / f"n_{len(subset)}")
        answers = generate_answers(
            result.base_model,
            test_records,
            cfg.max_new_tokens,
            cfg.batch_size,
            Progress(f"S6 cluster #{cluster_id} curve n={result.n_train}", len(test_records)),
            adapter_dir=result.adapter_dir,
            constrain_tool_calls=cfg.constrained_decoding,
        )
        return CurvePoint(result.n_train, score_answers(test_records, answers, entry["output_kind"])[metric])

    full = CurvePoint(entry["n_train"], entry["scores"]["slm_finetuned"][metric])
    try:
        return learning_curve(
            train_records, full, entry["n_test"], entry["parity_bar"], cfg.learning_curve, train_and_score
        )
    except ValueError as error:  # e.g. every call of a share longer than max_length
        return {"points": [], "verdict": f"no learning curve: {error}"}


def log_learning_curve(cluster_id: int, metric: str, curve: dict) -> None:
    """Each point as a step of one metric (the MLflow chart is the curve), the fit's figures as metrics."""
    prefix = f"cluster_{cluster_id}.learning_curve"
    for point in curve["points"]:
        mlflow.log_metric(f"{prefix}.{metric}", point["score"], step=point["n_train"])
    figures = {key: curve.get(key) for key in ("target", "ceiling", "calls_for_target")}
    if curve.get("reachable") is not None:
        figures["reachable"] = float(curve["reachable"])
    log_numeric_metrics(figures, f"{prefix}.")


def make_tuned_answerer(cfg: EvaluateConfig):
    """(engine name, (S5's model entry, records, progress) -> [(completion, latency ms, confidence)]) on S6's
    engine, so the fine-tuned SLM's latency and cost are those of the engine that serves it; the confidence
    features (components/slm/confidence.py) are None where the engine gives none."""
    if cfg.engine == "transformers":

        def eager(model: dict, records: list[CallRecord], progress: Progress) -> list[tuple]:
            return generate_answers(
                model["base_model"],
                records,
                cfg.max_new_tokens,
                cfg.batch_size,
                progress,
                adapter_dir=model["adapter_dir"],
                constrain_tool_calls=cfg.constrained_decoding,
                with_confidence=True,
            )

        return GENERATION_ENGINE, eager
    from components.slm.engines import ServedAdapter, make_engine

    engine = make_engine(cfg.engine, cfg.engine_threads)

    def served(model: dict, records: list[CallRecord], progress: Progress) -> list[tuple]:
        adapter = ServedAdapter(model["base_model"], model["adapter_dir"])
        answers = []
        for start in range(0, len(records), cfg.batch_size):  # in the server's batches
            generations = engine.generate(adapter, records[start : start + cfg.batch_size], cfg.max_new_tokens)
            answers += [(g.text, g.latency_ms, getattr(g, "confidence", None)) for g in generations]
            progress(len(answers), len(records))
        engine.unload(adapter)
        return answers

    return engine.name, served


def split_confidence(answers: list[tuple]) -> tuple[list[tuple[str, float]], list[dict | None]]:
    """[(completion, latency ms)] and each answer's confidence (None for an answer that came without one)."""
    return [(a[0], a[1]) for a in answers], [a[2] if len(a) > 2 else None for a in answers]


@task(name="S6 evaluate", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def evaluate_task(
    cfg: EvaluateConfig, workdir: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> dict:
    with step_run("evaluate", cfg, workdir, tracking, parent_run_id):
        records = {r.record_id: r for r in read_records(resolve(workdir, cfg.curated))}
        splits = pd.read_parquet(resolve(workdir, cfg.splits))
        leaderboard = json.loads(resolve(workdir, cfg.leaderboard).read_text())
        base_predictions = pd.read_parquet(resolve(workdir, cfg.base_predictions))
        finetune_summary = json.loads(resolve(workdir, cfg.finetune_summary).read_text())
        trained = finetune_summary["clusters"]
        selected = {c["cluster_id"]: c for c in leaderboard["clusters"]}
        log_evaluation_inputs(
            records,
            splits,
            [model["cluster_id"] for model in trained],
            resolve(workdir, cfg.curated),
            resolve(workdir, cfg.splits),
        )
        engine_name, answer_tuned = make_tuned_answerer(cfg)
        entries, prediction_rows, call_rows = [], [], []
        adapters: dict[int, str] = {}
        known_tools: dict[int, list[str]] = {}
        gates: dict[int, str] = {}
        for model in trained:
            cluster_id = model["cluster_id"]
            cluster = selected[cluster_id]
            test_records = split_records(records, splits, cluster_id, "test")
            # The base model's answers were generated by S4 on the same held-out calls, greedily: reuse them.
            base = base_predictions[
                (base_predictions.cluster_id == cluster_id) & (base_predictions.candidate == cluster["selected"])
            ].set_index("record_id")
            base_answers = [
                (base.at[r.record_id, "text"], float(base.at[r.record_id, "latency_ms"])) for r in test_records
            ]
            tuned_answers, tuned_confidence = split_confidence(
                answer_tuned(model, test_records, Progress(f"S6 cluster #{cluster_id}", len(test_records)))
            )
            entry, rows = evaluate_cluster(
                cluster,
                model["n_train"],
                test_records,
                base_answers,
                tuned_answers,
                cfg.promotion,
                cfg.slm_hourly_cost_usd,
                tuned_confidence,
            )
            train_records = split_records(records, splits, cluster_id, "train")
            if cfg.learning_curve.enabled and below_parity(entry):
                entry["learning_curve"] = cluster_learning_curve(
                    cfg, workdir, cluster, train_records, test_records, entry
                )
                log_learning_curve(cluster_id, entry["primary_metric"], entry["learning_curve"])
                say(f"S6 evaluate: cluster #{cluster_id}: {entry['learning_curve']['verdict']}")
            call_rows += rows
            reason, promoted = entry["promotion_reason"], entry["promoted"]
            name = registered_name(cfg.registered_model_prefix, cluster_id)
            alias = CHAMPION if promoted else CHALLENGER
            # Every new version starts as `challenger`; only the gate moves `champion` (and records the history
            # that `llm2slm rollback` walks back).
            version = register_challenger(
                model["model_uri"],
                name,
                {"cluster_label": cluster["label"], "promotion_reason": reason},
                promote_reason=reason if promoted else None,
            )
            entry["registered_model"] = {"name": name, "version": version, "alias": alias}
            entries.append(entry)
            adapters[cluster_id] = model["adapter_dir"]
            gate_file = resolve(workdir, cfg.selective_gates) / f"cluster_{cluster_id}.json"
            gate_file.unlink(missing_ok=True)  # a gate of an earlier run must not outlive its decision
            if route_mode(entry) == "selective":
                gates[cluster_id] = str(write_selective_gate(entry, gate_file))
                mlflow.log_artifact(gates[cluster_id], "selective")
            known_tools[cluster_id] = offered_tools(train_records)
            prediction_rows += [
                {"record_id": r.record_id, "cluster_id": cluster_id, "text": text, "latency_ms": latency}
                for r, (text, latency) in zip(test_records, tuned_answers)
            ]
            say(f"S6 evaluate: cluster #{cluster_id}: {reason} -> {name} v{version} @{alias}")

        log_per_call_results(call_rows)
        log_call_traces(call_traces(entries, call_rows, cfg.max_traces), total=len(call_rows))
        write_table(
            pd.DataFrame(prediction_rows, columns=["record_id", "cluster_id", "text", "latency_ms"]),
            resolve(workdir, cfg.predictions),
        )
        not_converted = [
            {"cluster_id": int(c["cluster_id"]), "reason": c["reason"]} for c in finetune_summary.get("skipped", [])
        ]
        collected = read_records(resolve(workdir, cfg.collected))
        assignments = pd.read_parquet(resolve(workdir, cfg.assignments))
        summary = run_summary(
            [CollectedCall(r.record_id, r.cost_usd, content_hash(r)) for r in collected],
            dict(zip(assignments.record_id, assignments.cluster_id.astype(int))),
            entries,
            not_converted,
            cost_basis(engine_name, cfg.slm_serving_hardware, cfg.slm_hourly_cost_usd),
        )
        evaluation = {"summary": summary, "clusters": entries}
        router = router_config(entries, adapters, known_tools, str(resolve(workdir, cfg.cluster_model_dir)), gates)
        mlflow.log_artifact(str(write_router_config(router, resolve(workdir, cfg.router_config))))
        log_numeric_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        log_json_artifact(evaluation, resolve(workdir, cfg.evaluation))
        log_json_artifact(metrics_view(entries), resolve(workdir, cfg.metrics))
        log_numeric_metrics(metrics_view(entries))
        report = write_report(entries, resolve(workdir, cfg.report), summary)
        mlflow.log_artifact(str(report))
        mlflow.log_text(write_markdown_summary(entries), "summary.md")
    return evaluation
