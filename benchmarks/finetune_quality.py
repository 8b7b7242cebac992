"""S5 quality: the fine-tuned SLM's held-out scores per training recipe and per decoding, with 95 % intervals.

    python benchmarks/finetune_quality.py --workdir runs/demo [--params params.yaml] [--clusters 0 1]
        [--recipes run logs aug1 aug3 aug10 full-ft full-prompt] [--decodings before free grammar]

Run it after a conversion (`llm2slm run` or `dvc repro`) in that work dir. "run" is the run's own adapter
(reports/finetune.json, trained with the params as they were); every other recipe trains the same cluster with S5's
own code (components/finetune/dataset.py + train.py: same params, overrides included) changed in one lever, into
<workdir>/benchmarks/finetune_quality/<recipe>/:

- logs: logged calls only (augmentation and synthesis off)
- aug1 / aug3 / aug10: + value-diverse augmentation, that many copies per training call
- full-ft: logged calls, full fine-tuning instead of LoRA, at learning_rate 1e-4 (LoRA's 1e-3 is too high when
  every weight moves)
- full-prompt: logged calls, prompt pruning off
- history1 / history1-aug3: the prompt keeps the last earlier turn (prompt_pruning.history_turns 1), logs / + aug3
- len768 / history1-len768: logged calls in a 768-token training window (finetune.max_length), so the calls that
  512 leaves out are trained on too

Each adapter answers the cluster's test split with:

- before: no grammar, at most 96 new tokens (main's decoding before the grammar and the answer budget)
- free: no grammar, the adapter's answer budget (its longest training answer x 1.5 + 16, capped by params)
- grammar: the budget, and calls decoded under the grammar of the offered tools (S6's decoding)

Prints one row per cluster x recipe x decoding and writes the rows to <workdir>/reports/finetune_quality.json.
Seconds per step are wall time on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DECODINGS = {"before": (False, 96), "free": (False, None), "grammar": (True, None)}
RECIPES = [
    "run",
    "logs",
    "aug1",
    "aug3",
    "aug10",
    "full-ft",
    "full-prompt",
    "history1",
    "history1-aug3",
    "len768",
    "history1-len768",
]


def recipe_config(cfg, recipe: str):
    """S5's settings for one cluster with the recipe's one lever changed (everything else as the run's params)."""
    logs_only = {
        "augmentation": cfg.augmentation.model_copy(update={"enabled": False}),
        "synthesis": cfg.synthesis.model_copy(update={"enabled": False}),
    }
    if recipe.startswith("history1"):
        pruning = cfg.prompt_pruning.model_copy(update={"history_turns": 1})
        rest = recipe.removeprefix("history1").removeprefix("-") or "logs"
        return recipe_config(cfg.model_copy(update={"prompt_pruning": pruning}), rest)
    if recipe.startswith("len"):
        length, _, rest = recipe.removeprefix("len").partition("-")
        return recipe_config(cfg.model_copy(update={"max_length": int(length)}), rest or "logs")
    if recipe.startswith("aug"):
        copies = int(recipe.removeprefix("aug"))
        return cfg.model_copy(
            update={"augmentation": cfg.augmentation.model_copy(update={"enabled": True, "copies": copies})}
        )
    if recipe == "full-ft":
        return cfg.model_copy(
            update={**logs_only, "lora": cfg.lora.model_copy(update={"enabled": False}), "learning_rate": 1.0e-4}
        )
    if recipe == "full-prompt":
        return cfg.model_copy(
            update={**logs_only, "prompt_pruning": cfg.prompt_pruning.model_copy(update={"enabled": False})}
        )
    if recipe == "logs":
        return cfg.model_copy(update=logs_only)
    raise ValueError(f"unknown recipe {recipe!r}: one of {RECIPES}")


def train_recipe(workdir: Path, params: dict, cluster_id: int, records: dict, splits, recipe: str) -> dict:
    from components.core.schema import split_records
    from components.finetune.dataset import build_training_set
    from components.finetune.train import FinetuneConfig, config_for_cluster, finetune

    cfg = recipe_config(config_for_cluster(FinetuneConfig.model_validate(params["finetune"]), cluster_id), recipe)
    summary = json.loads((workdir / cfg.summary).read_text())
    base = next(c["base_model"] for c in summary["clusters"] if c["cluster_id"] == cluster_id)
    training = build_training_set(
        split_records(records, splits, cluster_id, "train"),
        [r.user_request for r in split_records(records, splits, cluster_id, "test")],
        cfg,
    )
    output = workdir / "benchmarks/finetune_quality" / recipe / f"cluster_{cluster_id}"
    began = time.perf_counter()
    result = finetune(base, training.examples, cfg, output, eval_records=training.validation)
    return {
        "adapter_dir": result.adapter_dir,
        "base_model": base,
        "n_train": result.n_train,
        "examples_by_origin": training.examples_by_origin,
        "steps": result.steps,
        "seconds": result.seconds or time.perf_counter() - began,
        "mean_tokens_per_call": result.mean_tokens_per_call,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=None, help="default: <workdir>/params.yaml, else ./params.yaml")
    parser.add_argument("--clusters", type=int, nargs="*", default=None, help="default: every fine-tuned cluster")
    parser.add_argument("--recipes", nargs="*", default=["run", "logs", "aug3"], choices=RECIPES)
    parser.add_argument("--decodings", nargs="*", default=list(DECODINGS), choices=list(DECODINGS))
    args = parser.parse_args()

    import pandas as pd
    import yaml

    from components import slm
    from components.core.schema import read_records, split_records
    from components.evaluate.evaluation import EvaluateConfig, proportion_interval
    from components.scoring.costs import latency_p50
    from components.scoring.metrics import score_pairs

    workdir = args.workdir.resolve()
    params_path = args.params or next(p for p in (workdir / "params.yaml", Path("params.yaml")) if p.exists())
    params = yaml.safe_load(params_path.read_text())
    evaluate_cfg = EvaluateConfig.model_validate(params.get("evaluate", {}))
    records = {r.record_id: r for r in read_records(workdir / evaluate_cfg.curated)}
    splits = pd.read_parquet(workdir / evaluate_cfg.splits)
    summary = json.loads((workdir / evaluate_cfg.finetune_summary).read_text())["clusters"]
    rows = []
    for trained in summary:
        cluster_id = trained["cluster_id"]
        if args.clusters is not None and cluster_id not in args.clusters:
            continue
        test = split_records(records, splits, cluster_id, "test")
        for recipe in args.recipes:
            model_info = (
                trained if recipe == "run" else train_recipe(workdir, params, cluster_id, records, splits, recipe)
            )
            model, tokenizer = slm.load_model(model_info["base_model"], model_info["adapter_dir"])
            for decoding in args.decodings:
                constrain, cap = DECODINGS[decoding]
                generations = slm.generate(
                    model,
                    tokenizer,
                    test,
                    batch_size=evaluate_cfg.batch_size,
                    max_new_tokens=cap or evaluate_cfg.max_new_tokens,
                    constrain_tool_calls=constrain,
                )
                answers = [slm.parse_completion(g.text) for g in generations]
                scores = score_pairs([r.response for r in test], answers, "tool_call", tools=[r.tools for r in test])
                row = {
                    "cluster": cluster_id,
                    "recipe": recipe,
                    "n_train": model_info["n_train"],
                    "decoding": decoding,
                    "n_test": len(test),
                    "tokens_per_call": round(model_info["mean_tokens_per_call"], 1),
                    "steps": model_info["steps"],
                    "seconds_per_step": round(model_info["seconds"] / max(model_info["steps"], 1), 1),
                    **{k: round(v, 3) for k, v in scores.items()},
                    "full_call_match_ci95": proportion_interval(scores["full_call_match"], len(test)),
                    "latency_ms_p50": round(latency_p50(g.latency_ms for g in generations)),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    columns = [
        "cluster",
        "recipe",
        "n_train",
        "decoding",
        "tokens_per_call",
        "steps",
        "seconds_per_step",
        "full_call_match",
        "full_call_match_ci95",
        "function_name_accuracy",
        "argument_accuracy",
        "valid_json",
        "latency_ms_p50",
    ]
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    output = workdir / "reports/finetune_quality.json"
    output.write_text(json.dumps(rows, indent=2))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
