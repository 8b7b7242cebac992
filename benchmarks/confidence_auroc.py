"""How well each confidence signal of the fine-tuned SLM separates its right answers from its wrong ones: AUROC
per signal on a run's held-out calls, read from the evaluate run's per-call table (no fitting: raw signals).

    PYTHONPATH=. python benchmarks/confidence_auroc.py --workdir runs/demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sklearn.metrics import roc_auc_score

SIGNALS = ["mean_logprob", "min_logprob", "name_logprob", "value_logprob"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--metric", default="full_call_match")
    args = parser.parse_args()
    tables = sorted(args.workdir.glob("mlartifacts/*/artifacts/evaluation/per_call_results.json"))
    if not tables:
        raise SystemExit(f"no evaluate per-call table under {args.workdir}/mlartifacts")
    table = json.loads(tables[-1].read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    right = [bool(row[f"slm_finetuned.{args.metric}"]) for row in rows]
    print(f"{len(rows)} held-out calls, accuracy {sum(right) / len(rows):.3f} ({args.metric})")
    print(f"{'signal':<16}{'AUROC':>7}")
    for signal in SIGNALS:
        pairs = [(row.get(f"slm_finetuned.{signal}"), ok) for row, ok in zip(rows, right)]
        pairs = [(value, ok) for value, ok in pairs if value is not None]
        if len({ok for _, ok in pairs}) < 2:
            print(f"{signal:<16}{'n/a':>7}")
            continue
        print(f"{signal:<16}{roc_auc_score([ok for _, ok in pairs], [value for value, _ in pairs]):>7.3f}")


if __name__ == "__main__":
    main()
