"""S3 on a whole log, long tail included: are the clusters one task each, and can the router reproduce them?

    python benchmarks/discover_longtail.py                         # BFCL live_simple + live_multiple, every call
    python benchmarks/discover_longtail.py --log calls.jsonl --known-groups groups.jsonl --truth api_class

Every call of the log is scored (not only those with a known service domain). A seeded 80 % of the calls is
fitted with params.yaml's discover section; the other 20 % are placed the way the router places them, from the
request alone (:func:`components.discover.identity.assign`), and scored against the truth: by default the called
function's family (:func:`components.discover.task_keys.function_family`: ``Movies_3_FindMovies`` ->
``Movies_FindMovies``; the mapping is printed), or a field of ``--known-groups`` (e.g. the API class of a
multi-turn agent; a text answer is its own group ``text``). Homogeneity and completeness are over the placed
calls, ARI counts the outliers as one group (an outlier counts against coverage), and the outlier share and the
largest cluster's share (with the share of its most common truth) are given. ``request_only_agreement``: the
router's placement of the held-out calls against the fit's own rule for them (which knows their answers).

Beside it, in the same run, BERTopic-style defaults: MiniLM on the request + tools as one text, UMAP 5-d
(n_neighbors 15, min_dist 0, cosine), HDBSCAN (min_cluster_size 10, eom) fitted on the same 80 %, and the held-out
calls placed by UMAP's ``transform`` and HDBSCAN's ``approximate_predict`` (BERTopic's ``transform``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, completeness_score, homogeneity_score

from benchmarks.discover_data import CACHE, demo_records
from components.collect.ingest import CollectConfig, collect_lines
from components.core.config import load_params, load_section
from components.core.schema import CallRecord
from components.discover.clustering import OUTLIER
from components.discover.discovery import DiscoverConfig, discover, embed_records
from components.discover.embeddings import TextSettings
from components.discover.identity import assign_embedded, request_only_agreement
from components.discover.task_keys import TEXT_KEY, function_family, task_key, task_keys

BFCL_LIVE = ["live_simple", "live_multiple"]
BASELINE_TEXT = TextSettings(combine="template", template="Tools: {tools}\nRequest: {request}")


def scores(truth: list[str], labels: np.ndarray) -> dict[str, float]:
    truth_array, labels = np.asarray(truth), np.asarray(labels)
    placed = labels != OUTLIER
    sizes = Counter(labels[placed].tolist())
    largest, largest_size = sizes.most_common(1)[0] if sizes else (None, 0)
    largest_truth = Counter(truth_array[labels == largest].tolist()).most_common(1) if sizes else []
    return {
        "calls": len(truth),
        "homogeneity": round(homogeneity_score(truth_array[placed], labels[placed]), 3) if placed.any() else 0.0,
        "completeness": round(completeness_score(truth_array[placed], labels[placed]), 3) if placed.any() else 0.0,
        "ari_outliers_as_one_group": round(adjusted_rand_score(truth_array, labels), 3),
        "outlier_share": round(float(np.mean(~placed)), 3),
        "largest_cluster_share": round(largest_size / len(truth), 3),
        "largest_cluster_top_truth_share": round(largest_truth[0][1] / largest_size, 3) if largest_truth else 0.0,
        "clusters_used": len(sizes),
    }


def load_log(args) -> tuple[list[CallRecord], list[str]]:
    if args.log is None:
        records, _ = demo_records(BFCL_LIVE, 100_000)
        return records, [task_key(r, "function") for r in records]
    lines = Path(args.log).read_text(encoding="utf-8").splitlines()
    records = collect_lines(lines, CollectConfig()).records
    groups = {}
    for line in Path(args.known_groups).read_text(encoding="utf-8").splitlines():
        group = json.loads(line)
        groups[group["record_id"]] = group
    truth = [
        TEXT_KEY if not r.response.tool_calls else str(groups[r.record_id][args.truth]) for r in records
    ]  # a text answer is no API's call: its own group, so a cluster mixing them with calls is not homogeneous
    return records, truth


def baseline(embeddings: np.ndarray, fit: np.ndarray, held_out: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    import hdbscan
    import umap

    reducer = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=seed)
    reduced = reducer.fit_transform(embeddings[fit])
    clusterer = hdbscan.HDBSCAN(min_cluster_size=10, cluster_selection_method="eom", prediction_data=True)
    clusterer.fit(reduced)
    placed, _ = hdbscan.approximate_predict(clusterer, reducer.transform(embeddings[held_out]))
    return np.asarray(clusterer.labels_), np.asarray(placed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="a JSONL log (default: every BFCL live_simple + live_multiple call)")
    parser.add_argument("--known-groups", help="JSONL with record_id and the truth field, beside --log")
    parser.add_argument("--truth", default="task", help="the field of --known-groups that is the truth")
    parser.add_argument("--held-out", type=float, default=0.2)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    cfg = load_section(load_params(), "discover", DiscoverConfig)
    records, truth = load_log(args)
    if args.log is None:
        mapping = defaultdict(set)
        for r in records:
            for call in r.response.tool_calls:
                mapping[function_family(call.name)].add(call.name)
        renamed = {family: sorted(names) for family, names in sorted(mapping.items()) if names != {family}}
        print(json.dumps({"function_families": len(mapping), "families_renamed": renamed}))
    embeddings, embedded_now = embed_records(records, cfg, CACHE)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(records))
    n_held_out = round(args.held_out * len(records))
    held_out, fit = np.sort(order[:n_held_out]), np.sort(order[n_held_out:])
    started = time.perf_counter()
    result = discover([records[i] for i in fit], cfg, embeddings=embeddings[fit])
    fit_seconds = time.perf_counter() - started
    held_records = [records[i] for i in held_out]
    request_only, _ = assign_embedded(held_records, embeddings[held_out], result.model)
    # The second level the fit used: S3 may have fallen back from cfg.task.split_by (multi-turn agents).
    split_by = (result.task_split or {}).get("split_by", cfg.task.split_by)
    all_keys = task_keys(records, split_by, cfg.task)  # split_by api reads the APIs off the whole log
    keys = [all_keys[i] for i in held_out]
    fit_counts = Counter(truth[i] for i in fit)
    placeable = np.mean([fit_counts[truth[i]] >= cfg.task.min_task_calls for i in held_out])
    report = {
        "log": args.log or "+".join(BFCL_LIVE),
        "truth": "function family" if args.log is None else args.truth,
        "calls": len(records),
        "texts_embedded_now": embedded_now,
        "fit_calls": len(fit),
        "held_out_calls": len(held_out),
        # Held-out calls whose truth has at least min_task_calls calls in the fit: no pure cluster can hold more.
        "held_out_placeable_bound": round(float(placeable), 3),
        "s3": {
            "fit_seconds": round(fit_seconds, 1),
            "clusters": len(result.clusters),
            "task_split": result.task_split,
            "candidates": sum(c["candidate"] for c in result.clusters),
            "fit": scores([truth[i] for i in fit], result.assignments.cluster_id.to_numpy()),
            "held_out_request_only": scores([truth[i] for i in held_out], request_only),
            "request_only_agreement": request_only_agreement(held_records, keys, result.model, embeddings[held_out]),
            "identity_check_of_the_fit": result.identity_check,
            "outlier_reasons": result.outlier_reasons,
        },
    }
    if not args.no_baseline:
        texts_cfg = cfg.model_copy(update={"text": BASELINE_TEXT})
        baseline_embeddings, _ = embed_records(records, texts_cfg, CACHE)
        started = time.perf_counter()
        fit_labels, placed = baseline(baseline_embeddings, fit, held_out, cfg.seed)
        report["bertopic_defaults"] = {
            "fit_seconds": round(time.perf_counter() - started, 1),
            "clusters": int(fit_labels.max()) + 1,
            "fit": scores([truth[i] for i in fit], fit_labels),
            "held_out_transform": scores([truth[i] for i in held_out], placed),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
