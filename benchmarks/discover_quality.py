"""S3 quality: do the clusters recover the source's known tasks?

    python benchmarks/discover_quality.py [--categories live_multiple] [--records 1053]

The demo builder keeps each call's known task aside (``demo_data.known_group``): for BFCL's live categories the
Schema-Guided-Dialogue service domain of the expected call (Music, Events, Hotels, ...), for other items the BFCL
category. Prints, as JSON, the adjusted Rand index (ARI), homogeneity and completeness of the S3 pipeline
(params.yaml's discover section) on the calls whose known task is a service domain; the other calls are in the
log and clustered with the rest, but their BFCL category lumps unrelated requests and is no task. ARI is given
with outliers as one group and over the clustered calls only. Target: ARI >= 0.6.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score, completeness_score, homogeneity_score

from benchmarks.discover_data import demo_records, embeddings_for
from components.core.config import load_params, load_section
from components.discover.discovery import DiscoverConfig, discover


def agreement(truth: list[str], labels: np.ndarray) -> dict[str, float]:
    truth_array = np.asarray(truth)
    clustered = labels >= 0
    return {
        "calls": len(truth),
        "ari": round(adjusted_rand_score(truth_array, labels), 3),
        "ari_clustered_only": round(adjusted_rand_score(truth_array[clustered], labels[clustered]), 3),
        "homogeneity": round(homogeneity_score(truth_array[clustered], labels[clustered]), 3),
        "completeness": round(completeness_score(truth_array[clustered], labels[clustered]), 3),
        "outlier_share": round(float(np.mean(~clustered)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["live_multiple"])
    parser.add_argument("--records", type=int, default=1053)
    args = parser.parse_args()
    cfg = load_section(load_params(), "discover", DiscoverConfig)  # params.yaml of the current directory
    records, groups = demo_records(args.categories, args.records)
    embeddings = embeddings_for(records, cfg)
    started = time.perf_counter()
    result = discover(records, cfg, embeddings=embeddings)
    seconds = time.perf_counter() - started
    labels = result.assignments["cluster_id"].to_numpy()
    # Only calls whose known task is a real task count: the BFCL-category fallback lumps unrelated requests.
    known = np.array([g["task"] != g["category"] for g in groups])
    report = {
        "categories": args.categories,
        "calls": len(records),
        "clusters": len(result.clusters),
        "outlier_share": round(result.outlier_share, 3),
        "fit_seconds": round(seconds, 1),
        "calls_without_known_task": int((~known).sum()),
    }
    if known.any():
        report["known_task_calls"] = agreement([g["task"] for g, k in zip(groups, known) if k], labels[known])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
