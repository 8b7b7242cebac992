"""S3 stability: does the clustering come out the same on a re-run, with another seed, or on part of the data?

    python benchmarks/discover_stability.py [--categories live_multiple] [--records 1053]

On the demo calls (cached task embeddings, default settings of params.yaml's discover section), prints as JSON the
adjusted Rand index (ARI) between the labels of: the same seed twice (determinism), seeds 42 and 7, and a fit on a
random 80 % of the calls and the full fit (on that 80 %). Also how :func:`assign` places the held-out 20 % with
the 80 % model, against the full fit. Outliers count as one group. Target: ARI >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from benchmarks.discover_data import demo_records, embeddings_for
from components.core.config import load_params, load_section
from components.discover.discovery import DiscoverConfig, discover
from components.discover.identity import assign


def labels_of(records, embeddings, cfg):
    started = time.perf_counter()
    result = discover(records, cfg, embeddings=embeddings)
    return result, result.assignments["cluster_id"].to_numpy(), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["live_multiple"])
    parser.add_argument("--records", type=int, default=1053)
    args = parser.parse_args()
    cfg = load_section(load_params(), "discover", DiscoverConfig)
    records, _ = demo_records(args.categories, args.records)
    embeddings = embeddings_for(records, cfg)
    full, labels, seconds = labels_of(records, embeddings, cfg)
    _, again, _ = labels_of(records, embeddings, cfg)
    _, other_seed, _ = labels_of(records, embeddings, cfg.model_copy(update={"seed": 7}))
    keep = np.sort(np.random.default_rng(0).choice(len(records), int(0.8 * len(records)), replace=False))
    held_out = np.setdiff1d(np.arange(len(records)), keep)
    part, part_labels, _ = labels_of([records[i] for i in keep], embeddings[keep], cfg)
    placed = assign(embeddings[held_out], part.model, [records[i].record_id for i in held_out])
    both = (placed.cluster_id.to_numpy() >= 0) & (labels[held_out] >= 0)
    report = {
        "calls": len(records),
        "clusters": len(full.clusters),
        "outlier_share": round(full.outlier_share, 3),
        "fit_seconds": round(seconds, 1),
        "ari_same_seed": round(adjusted_rand_score(labels, again), 3),
        "ari_seed_42_vs_7": round(adjusted_rand_score(labels, other_seed), 3),
        "ari_80pct_vs_full": round(adjusted_rand_score(labels[keep], part_labels), 3),
        "assign_held_out_20pct": {
            "ari_vs_full_fit": round(adjusted_rand_score(labels[held_out], placed.cluster_id), 3),
            "ari_placed_and_clustered": round(adjusted_rand_score(labels[held_out][both], placed.cluster_id[both]), 3),
            "placed_share": round(float(np.mean(placed.cluster_id >= 0)), 3),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
