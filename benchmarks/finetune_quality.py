"""S5 quality: the fine-tuned SLM's held-out scores per training prompt (pruned / full) and per decoding.

    python benchmarks/finetune_quality.py --workdir runs/demo [--params params.yaml] [--clusters 0 1]
                                          [--trainings pruned full] [--decodings before free grammar]

Run it after a conversion (`llm2slm run` or `dvc repro`) in that work dir. "pruned" is the run's own adapter
(reports/finetune.json, params as they were); "full" trains the same cluster with the same params but prompt
pruning off, into <workdir>/benchmarks/finetune_quality/. Each adapter answers the cluster's test split with:

- before: no grammar, at most 96 new tokens (main's decoding before the grammar and the answer budget)
- free: no grammar, the adapter's answer budget (its longest training answer x 1.5 + 16, capped by params)
- grammar: the budget, and calls decoded under the grammar of the offered tools (components/slm/grammar.py)

Prints one row per cluster x training x decoding and writes the rows to
<workdir>/reports/finetune_quality.json. Seconds per step are wall time on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DECODINGS = {"before": (False, 96), "free": (False, None), "grammar": (True, None)}


def train_full_prompt(workdir: Path, params: dict, cluster_id: int, records: dict, splits) -> dict:
    from components.core.schema import split_records
    from components.finetune.train import FinetuneConfig, config_for_cluster, finetune

    cfg = config_for_cluster(FinetuneConfig.model_validate(params["finetune"]), cluster_id)
    cfg = cfg.model_copy(update={"prompt_pruning": cfg.prompt_pruning.model_copy(update={"enabled": False})})
    summary = json.loads((workdir / cfg.summary).read_text())
    base = next(c["base_model"] for c in summary["clusters"] if c["cluster_id"] == cluster_id)
    output = workdir / "benchmarks/finetune_quality/full" / f"cluster_{cluster_id}"
    began = time.perf_counter()
    result = finetune(base, split_records(records, splits, cluster_id, "train"), cfg, output)
    return {
        "adapter_dir": result.adapter_dir,
        "base_model": base,
        "steps": result.steps,
        "seconds": result.seconds or time.perf_counter() - began,
        "mean_tokens_per_call": result.mean_tokens_per_call,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=None, help="default: <workdir>/params.yaml, else ./params.yaml")
    parser.add_argument("--clusters", type=int, nargs="*", default=None, help="default: every fine-tuned cluster")
    parser.add_argument("--trainings", nargs="*", default=["pruned", "full"], choices=["pruned", "full"])
    parser.add_argument("--decodings", nargs="*", default=list(DECODINGS), choices=list(DECODINGS))
    args = parser.parse_args()

    import pandas as pd
    import yaml

    from components import slm
    from components.core.schema import read_records, split_records
    from components.evaluate.evaluation import EvaluateConfig, latency_p50
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
        for training in args.trainings:
            model_info = (
                trained if training == "pruned" else train_full_prompt(workdir, params, cluster_id, records, splits)
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
                    "training": training,
                    "decoding": decoding,
                    "n_test": len(test),
                    "tokens_per_call": round(model_info["mean_tokens_per_call"], 1),
                    "steps": model_info["steps"],
                    "seconds_per_step": round(model_info["seconds"] / max(model_info["steps"], 1), 1),
                    **{k: round(v, 3) for k, v in scores.items()},
                    "latency_ms_p50": round(latency_p50(g.latency_ms for g in generations)),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    columns = [
        "cluster",
        "training",
        "decoding",
        "tokens_per_call",
        "steps",
        "seconds_per_step",
        "full_call_match",
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
