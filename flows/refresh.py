"""The Prefect flow `refresh`: the S6 flywheel. A new batch of logged calls goes through S1 and S2, joins the
history, is clustered (S3) with stable cluster ids, and its cluster mix is compared with the previous refresh's
(drift). Clusters whose data grew enough or whose champion's score dropped get a new challenger (S4 picks the
base SLM, S5 trains it); each challenger is compared with the champion and the LLM on the same fresh held-out
calls and promoted only through the gate of params `promotion`. One MLflow parent run per refresh, and one
Markdown artifact per flow run with its decisions.

Where S3's assignment without refit lands, `discover_task` + `stabilize_clusters_task` become: assign the batch
to the saved clusters, measure drift, and refit (then stabilize) only when the drift report says so.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from components.core.config import load_section, resolve
from components.evaluate.promotion import PromotionPolicy
from components.evaluate.refresh import (
    RefreshConfig,
    champion_scores_after,
    coverage_by_cluster,
    load_state,
    next_state,
    save_state,
)
from flows.steps import load_pipeline_config
from tasks.anonymize import anonymize_task
from tasks.collect import collect_task
from tasks.compare import compare_task
from tasks.demotions import apply_demotions_task
from tasks.discover import discover_task
from tasks.finetune import finetune_task
from tasks.helpers.flow_artifacts import publish_refresh
from tasks.helpers.tracking import end_parent_run, log_json_artifact_to_run, start_parent_run
from tasks.refresh import (
    champion_scores_task,
    drift_task,
    merge_batch_task,
    plan_task,
    retraining_config_task,
    seed_history_task,
    stabilize_clusters_task,
)
from tasks.select import select_task


@flow(name="refresh")
def refresh(params_path: str, workdir: str = ".", input_path: str | None = None, experiment: str | None = None) -> dict:
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = load_pipeline_config(Path(params_path), experiment)
    steps, tracking = config.steps, config.tracking
    refresh_cfg = load_section(config.params, "refresh", RefreshConfig)
    policy = load_section(config.params, "promotion", PromotionPolicy)
    # Before the first refresh after a conversion: its calls, ids, mix (the drift reference) and trained clusters.
    seed_history_task(
        refresh_cfg, steps["anonymize"].output, steps["discover"].assignments, root, steps["finetune"].summary
    )
    state = load_state(resolve(root, refresh_cfg.state))
    number = int(state["refresh"]) + 1
    parent = start_parent_run(
        root,
        tracking,
        f"refresh_{number}",
        {k: v for k, v in config.params.items() if k in ("refresh", "promotion", "finetune")},
        kind="refresh",
    )
    try:
        collect_task(steps["collect"], root, tracking, parent, Path(input_path).resolve() if input_path else None)
        anonymize_task(steps["anonymize"], root, tracking, parent)
        batch_ids = merge_batch_task(refresh_cfg, steps["anonymize"].output, root, tracking, parent)
        discover_task(steps["discover"], root, tracking, parent)
        clusters = stabilize_clusters_task(steps["discover"], refresh_cfg, root, state, batch_ids, tracking, parent)
        drift = drift_task(refresh_cfg, root, state, clusters, tracking, parent)
        # The router's demotions since the last refresh: the registry alias goes back (before the champions are
        # scored), and the cluster is retrained.
        promotions_log = resolve(root, refresh_cfg.promotions_log)
        demotions = apply_demotions_task(promotions_log, steps["evaluate"].registered_model_prefix)
        demoted = sorted({int(d["cluster_id"]) for d in demotions})
        champions = champion_scores_task(steps["evaluate"], root, clusters, tracking, parent)
        plan = plan_task(refresh_cfg, state, clusters, champions, parent, demoted)
        leaderboard, trained = None, {"clusters": []}
        if plan:
            leaderboard = select_task(steps["select"], root, tracking, parent)
            finetune_cfg = retraining_config_task(steps["finetune"], refresh_cfg, root, plan, number)
            trained = finetune_task(finetune_cfg, root, tracking, parent)
        comparison = compare_task(
            steps["evaluate"],
            refresh_cfg,
            policy,
            root,
            number,
            clusters,
            trained,
            champions,
            leaderboard,
            tracking,
            parent,
        )
        new_state = next_state(
            state,
            clusters["mix_all"],
            {int(m["cluster_id"]): m["n_train"] for m in trained["clusters"]},
            champion_scores_after(champions, comparison["clusters"]),
            {int(e["cluster_id"]): clusters["test_ids"].get(int(e["cluster_id"]), []) for e in comparison["clusters"]},
            steps["evaluate"].promotion.min_test_calls,
        )
        save_state(new_state, resolve(root, refresh_cfg.state))
        summary = {
            "refresh": number,
            "batch_records": len(batch_ids),
            "drift": drift,
            "retrained": {str(k): v for k, v in plan.items()},
            "audited": clusters["audited"],  # the batch's audited calls per cluster: accuracy and interval
            "demotions": demotions,
            "coverage": coverage_by_cluster(comparison["clusters"]),
            "clusters": comparison["clusters"],
        }
        log_json_artifact_to_run(parent, summary, resolve(root, refresh_cfg.report))
    except BaseException:
        end_parent_run(parent, "FAILED")
        raise
    end_parent_run(parent)
    publish_refresh(summary, parent)  # the flow run's Artifacts tab: drift, retraining, decisions, the MLflow run
    return {"parent_run_id": parent, **summary, "report": str(resolve(root, refresh_cfg.report))}
