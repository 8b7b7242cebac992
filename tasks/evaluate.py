"""S6 task: compare the LLM, the base SLM and the fine-tuned SLM on each cluster's held-out calls, gate the
promotion, register the fine-tuned model with an alias, and write the evaluation table and report. Beside the
figures, the run holds one row per held-out call (an MLflow table), up to ``max_traces`` of them as traces with
their assessments, and its data as MLflow datasets; with
``learning_curve.enabled``, each cluster below parity is retrained on shares of its calls (S5's ``finetune``)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.collect.sources.common import content_hash
from components.core import artifacts
from components.core.clusters import registered_name
from components.core.config import resolve
from components.core.schema import CallRecord, read_records, write_table
from components.core.step_files import Evaluation, LeaderboardCluster
from components.evaluate.call_traces import call_traces
from components.evaluate.cluster_evaluation import ClusterEvaluation, evaluate_trained_clusters, not_converted
from components.evaluate.entry import score_answers
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
    cluster: LeaderboardCluster,
    train_records: list[CallRecord],
    test_records: list[CallRecord],
    entry: dict,
) -> dict:
    """The cluster's learning curve: each smaller share trained as S5 trains (its settings, overrides included) and
    scored on the same held-out calls; the full share is the adapter S5 trained, as S6 just scored it."""
    cluster_id, metric = cluster.cluster_id, entry["primary_metric"]
    folder = resolve(workdir, cfg.learning_curve.output_dir) / f"cluster_{cluster_id}"
    training = config_for_cluster(cfg.finetune, cluster_id)

    def train_and_score(subset: list[CallRecord]) -> CurvePoint:
        say(f"S6 evaluate: cluster #{cluster_id}: learning curve, training on {len(subset)} calls")
        result = finetune(cluster.selected_ref, subset, training, folder / f"n_{len(subset)}")
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


def register_cluster(cfg: EvaluateConfig, done: ClusterEvaluation) -> dict:
    """Register the cluster's fine-tuned model: every new version starts as `challenger`; only the gate moves
    `champion` (and records the history that `llm2slm rollback` walks back). Its ``registered_model`` entry."""
    reason, promoted = done.entry["promotion_reason"], done.entry["promoted"]
    name = registered_name(cfg.registered_model_prefix, done.model.cluster_id)
    alias = CHAMPION if promoted else CHALLENGER
    version = register_challenger(
        done.model.model_uri,
        name,
        {"cluster_label": done.cluster.label, "promotion_reason": reason},
        promote_reason=reason if promoted else None,
    )
    say(f"S6 evaluate: cluster #{done.model.cluster_id}: {reason} -> {name} v{version} @{alias}")
    return {"name": name, "version": version, "alias": alias}


def write_gate(cfg: EvaluateConfig, workdir: Path, entry: dict) -> str | None:
    """A selective cluster's gate file (logged), else None; a gate of an earlier run never outlives its decision."""
    gate_file = resolve(workdir, cfg.selective_gates) / f"cluster_{entry['cluster_id']}.json"
    gate_file.unlink(missing_ok=True)
    if route_mode(entry) != "selective":
        return None
    mlflow.log_artifact(str(write_selective_gate(entry, gate_file)), "selective")
    return str(gate_file)


@task(name="S6 evaluate", retries=1, retry_condition_fn=retry_on_transient_io, cache_policy=NO_CACHE)
def evaluate_task(
    cfg: EvaluateConfig, workdir: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> dict:
    with step_run("evaluate", cfg, workdir, tracking, parent_run_id):
        curated_path = artifacts.path_of(artifacts.CURATED, workdir, cfg.curated)
        splits_path = artifacts.path_of(artifacts.SPLITS, workdir, cfg.splits)
        records = {r.record_id: r for r in read_records(curated_path)}
        splits = pd.read_parquet(splits_path)
        leaderboard = artifacts.read(artifacts.LEADERBOARD, workdir, cfg.leaderboard)
        base_predictions = pd.read_parquet(artifacts.path_of(artifacts.BASE_PREDICTIONS, workdir, cfg.base_predictions))
        finetune_summary = artifacts.read(artifacts.FINETUNE_SUMMARY, workdir, cfg.finetune_summary)
        log_evaluation_inputs(
            records, splits, [model.cluster_id for model in finetune_summary.clusters], curated_path, splits_path
        )
        engine_name, answer_tuned = make_tuned_answerer(cfg)
        entries, prediction_rows, call_rows = [], [], []
        adapters: dict[int, str] = {}
        known_tools: dict[int, list[str]] = {}
        gates: dict[int, str] = {}
        evaluated = evaluate_trained_clusters(
            leaderboard,
            finetune_summary,
            records,
            splits,
            base_predictions,
            cfg,
            lambda model, calls, label: answer_tuned(model.as_dict(), calls, Progress(label, len(calls))),
            Progress,
            # the base's answers S4 did not make come from the same engine (no adapter), at the same speed
            lambda base_model, calls, _tokens, _batch, progress, **_: answer_tuned(
                {"base_model": base_model, "adapter_dir": None}, calls, progress
            ),
        )
        for done in evaluated:
            cluster_id, entry = done.model.cluster_id, done.entry
            if cfg.learning_curve.enabled and below_parity(entry):
                entry["learning_curve"] = cluster_learning_curve(
                    cfg, workdir, done.cluster, done.train_records, done.test_records, entry
                )
                log_learning_curve(cluster_id, entry["primary_metric"], entry["learning_curve"])
                say(f"S6 evaluate: cluster #{cluster_id}: {entry['learning_curve']['verdict']}")
            call_rows += done.call_rows
            entry["registered_model"] = register_cluster(cfg, done)
            entries.append(entry)
            adapters[cluster_id] = done.model.adapter_dir
            gate = write_gate(cfg, workdir, entry)
            if gate is not None:
                gates[cluster_id] = gate
            known_tools[cluster_id] = offered_tools(done.train_records)
            prediction_rows += done.prediction_rows()

        log_per_call_results(call_rows)
        log_call_traces(call_traces(entries, call_rows, cfg.max_traces), total=len(call_rows))
        write_table(
            pd.DataFrame(prediction_rows, columns=["record_id", "cluster_id", "text", "latency_ms"]),
            artifacts.path_of(artifacts.TUNED_PREDICTIONS, workdir, cfg.predictions),
        )
        collected = read_records(artifacts.path_of(artifacts.COLLECTED, workdir, cfg.collected))
        assignments = pd.read_parquet(artifacts.path_of(artifacts.ASSIGNMENTS, workdir, cfg.assignments))
        summary = run_summary(
            [CollectedCall(r.record_id, r.cost_usd, content_hash(r)) for r in collected],
            dict(zip(assignments.record_id, assignments.cluster_id.astype(int))),
            entries,
            not_converted(finetune_summary),
            cost_basis(engine_name, cfg.slm_serving_hardware, cfg.slm_hourly_cost_usd),
        )
        evaluation = Evaluation.model_validate({"summary": summary, "clusters": entries})
        model_dir, log = str(resolve(workdir, cfg.cluster_model_dir)), str(resolve(workdir, cfg.promotions_log))
        router = router_config(entries, adapters, known_tools, model_dir, gates, cfg.promotion, log)
        router_path = artifacts.path_of(artifacts.ROUTER_CONFIG, workdir, cfg.router_config)
        mlflow.log_artifact(str(write_router_config(router, router_path)))
        log_numeric_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(artifacts.write(artifacts.EVALUATION, evaluation, workdir, cfg.evaluation)))
        log_json_artifact(metrics_view(entries), artifacts.path_of(artifacts.EVALUATE_METRICS, workdir, cfg.metrics))
        log_numeric_metrics(metrics_view(entries))
        report = write_report(entries, artifacts.path_of(artifacts.EVALUATE_REPORT, workdir, cfg.report), summary)
        mlflow.log_artifact(str(report))
        mlflow.log_text(write_markdown_summary(entries), "summary.md")
    return evaluation.as_dict()
