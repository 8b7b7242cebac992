"""The llama.cpp engine (llama-cpp-python, an optional extra built from source): one GGUF copy of each base, each
cluster's LoRA as a GGUF adapter switched per batch, and the tool grammar applied at every step.

- Base: the prepared Hugging Face folder (components/slm.prepare_model) converted once by llama.cpp's
  ``convert_hf_to_gguf.py`` (``outtype``: f16 by default) into ``cache_dir()/gguf``.
- Adapters: ``convert_lora_to_gguf.py`` once per adapter folder; loaded onto the base with
  ``llama_adapter_lora_init`` and switched with ``llama_set_adapters_lora`` (none for the plain base), so clusters
  share one base in memory as with the PEFT pool. A whole fine-tuned model folder is converted as a base.
- Prompt and answer: the prompt is components/slm's (the adapter's prompt spec), tokenized by the Hugging Face
  tokenizer so both engines read the same ids; decoding is greedy, and a call that offers tools is masked by the
  same llguidance grammar as components/slm/grammar.py before each token is picked.

Needs ``llama_cpp`` (``pip install llm2slm[llama-cpp]``; it compiles) and a llama.cpp tree with the converters
($LLM2SLM_LLAMA_CPP_DIR, below; components/serve/export.py uses it for GGUF exports).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.core.machine import cpu_model
from components.core.schema import CallRecord
from components.slm.engine_protocol import ServedAdapter, folder_key

LLAMA_CPP_ENV = "LLM2SLM_LLAMA_CPP_DIR"  # a llama.cpp source tree (e.g. vendor/llama.cpp of llama-cpp-python's sdist)


def llama_cpp_dir(given: str | Path | None = None) -> Path | None:
    """A llama.cpp tree holding ``convert_hf_to_gguf.py``: ``given``, else $LLM2SLM_LLAMA_CPP_DIR; None if neither."""
    for candidate in (given, os.environ.get(LLAMA_CPP_ENV)):
        if candidate and (Path(candidate) / "convert_hf_to_gguf.py").exists():
            return Path(candidate)
    return None


def available() -> str | None:
    """None when the engine can run here, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install 'llm2slm[llama-cpp]'; it builds with cmake)"
    if llama_cpp_dir() is None:
        return f"no llama.cpp tree with convert_hf_to_gguf.py: set {LLAMA_CPP_ENV}"
    return None


def _convert(script: str, arguments: list[str], target: Path) -> Path:
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    done = subprocess.run(
        [sys.executable, str(llama_cpp_dir() / script), *arguments, "--outfile", str(partial)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed: {done.stderr.strip()[-1500:]}")
    partial.rename(target)
    return target


class LlamaCppEngine:
    """See the module docstring; all calls on one thread (the server's worker)."""

    name = "llama-cpp"

    def __init__(self, outtype: str = "f16", n_threads: int | None = None, n_ctx: int = 8192) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.outtype, self.n_threads, self.n_ctx = outtype, n_threads or os.cpu_count() or 1, n_ctx
        self._bases: dict[str, dict[str, Any]] = {}  # base folder -> llama, tokenizer, spec, adapters, active

    def _gguf_dir(self) -> Path:
        from components.core.assets import cache_dir

        return cache_dir() / "gguf"

    def _base(self, folder: str) -> dict[str, Any]:
        if folder not in self._bases:
            from llama_cpp import Llama
            from transformers import AutoTokenizer

            from components.slm.prompt_pruning import load_prompt_spec

            gguf = _convert(
                "convert_hf_to_gguf.py",
                [folder, "--outtype", self.outtype],
                self._gguf_dir() / f"{Path(folder).name}-{folder_key(folder)}-{self.outtype}.gguf",
            )
            llama = Llama(
                str(gguf), n_ctx=self.n_ctx, n_threads=self.n_threads, n_threads_batch=self.n_threads, verbose=False
            )
            tokenizer = AutoTokenizer.from_pretrained(folder)
            self._bases[folder] = {
                "llama": llama,
                "tokenizer": tokenizer,
                "spec": load_prompt_spec(folder),
                "adapters": {},
                "active": None,
            }
        return self._bases[folder]

    def _place(self, served: ServedAdapter) -> tuple[dict[str, Any], str | None]:
        """(the loaded base, the LoRA folder on it or None) for what serves a cluster."""
        from components.slm import prepare_model

        adapter = served.adapter_dir
        if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
            return self._base(str(adapter)), None  # a whole fine-tuned model
        base_folder = prepare_model(served.base_model)
        base = self._base(base_folder)
        if adapter is not None and str(Path(adapter).resolve()) not in base["adapters"]:
            import llama_cpp

            from components.slm.prompt_pruning import load_prompt_spec

            gguf = _convert(
                "convert_lora_to_gguf.py",
                [str(adapter), "--base", base_folder, "--outtype", "f32"],
                self._gguf_dir() / "lora" / f"{Path(adapter).name}-{folder_key(adapter)}.gguf",
            )
            handle = llama_cpp.llama_adapter_lora_init(base["llama"]._model.model, str(gguf).encode())
            if not handle:
                raise RuntimeError(f"llama.cpp could not load the LoRA {gguf}")
            base["adapters"][str(Path(adapter).resolve())] = (handle, load_prompt_spec(adapter))
        return base, None if adapter is None else str(Path(adapter).resolve())

    def load(self, served: ServedAdapter) -> None:
        self._place(served)

    def unload(self, served: ServedAdapter) -> None:
        import llama_cpp

        if served.adapter_dir is None:
            return
        for base in self._bases.values():
            entry = base["adapters"].pop(str(Path(served.adapter_dir).resolve()), None)
            if entry is not None:
                if base["active"] == str(Path(served.adapter_dir).resolve()):
                    self._activate(base, None)
                llama_cpp.llama_adapter_lora_free(entry[0])

    def _activate(self, base: dict[str, Any], adapter: str | None) -> None:
        import ctypes

        import llama_cpp

        if base["active"] == adapter:
            return
        llama = base["llama"]
        if adapter is None:
            llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(base["adapters"][adapter][0])
            if llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, handles, 1, (ctypes.c_float * 1)(1.0)):
                raise RuntimeError(f"llama.cpp could not switch to the LoRA of {adapter}")
        llama.reset()  # the cached prompt was computed under the other adapter
        base["active"] = adapter

    def generate(self, served: ServedAdapter, records: list[CallRecord], max_new_tokens: int) -> list[Any]:
        from components.slm.generation import Generation, _stop_token_ids
        from components.slm.prompt import render_prompt

        base, adapter = self._place(served)
        self._activate(base, adapter)
        spec = base["adapters"][adapter][1] if adapter else base["spec"]
        tokenizer, llama = base["tokenizer"], base["llama"]
        stop_ids = _stop_token_ids(tokenizer)
        budget = min(max_new_tokens, spec.max_answer_tokens) if spec and spec.max_answer_tokens else max_new_tokens
        required = spec is not None and spec.answers == "tool_calls"
        max_calls = spec.max_tool_calls if spec is not None else None
        results = []
        for record in records:
            prompt = tokenizer(render_prompt(tokenizer, record, spec), add_special_tokens=False)["input_ids"]
            masker = _GrammarMask(tokenizer, stop_ids, record.tools, required, max_calls) if record.tools else None
            began, first_token_ms, tokens = time.perf_counter(), None, []
            for token in llama.generate(
                prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                logits_processor=[masker] if masker and masker.matcher else None,
            ):  # fmt: skip
                if first_token_ms is None:
                    first_token_ms = (time.perf_counter() - began) * 1000
                tokens.append(int(token))
                if token in stop_ids or len(tokens) >= budget:
                    break
            end = len(tokens)
            generation = Generation(
                text=tokenizer.decode(tokens[:end], skip_special_tokens=True).strip(),
                latency_ms=(time.perf_counter() - began) * 1000,
                prompt_tokens=len(prompt),
                completion_tokens=end,
            )
            generation.first_token_ms = first_token_ms  # type: ignore[attr-defined]
            results.append(generation)
        return results

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        from components.slm.grammar import available as grammar_available

        return {
            "engine": self.name,
            "dtype": self.outtype,
            "device": "cpu",
            "threads": self.n_threads,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "constrained_decoding": grammar_available(),
            "versions": {package: version(package) for package in ("llama_cpp_python", "transformers")},
        }


class _GrammarMask:
    """A llama-cpp-python logits processor: the record's tool grammar (components/slm/grammar.py) on one row."""

    def __init__(self, tokenizer: Any, stop_ids: list[int], tools: list[dict[str, Any]], required: bool,
                 max_calls: int | None) -> None:  # fmt: skip
        import numpy as np

        from components.slm.grammar import _ll_tokenizer, available, tool_call_grammar

        self.matcher = None
        if not available():
            return
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_lark(tool_call_grammar(tools, required, max_calls))
        matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, tuple(stop_ids)), grammar, log_level=0)
        if matcher.is_error():
            return
        self.matcher, self.prompt_length, self.np = matcher, None, np
        self.stop_ids = stop_ids

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        np = self.np
        if self.prompt_length is None:
            self.prompt_length = len(input_ids)
        elif len(input_ids) > self.prompt_length and not self.matcher.is_stopped():
            self.matcher.consume_token(int(input_ids[-1]))
        if self.matcher.is_error():
            return scores
        if self.matcher.is_stopped():
            allowed = np.zeros(len(scores), dtype=bool)
            allowed[self.stop_ids] = True
        else:
            bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            allowed = np.unpackbits(bits, bitorder="little")[: len(scores)].astype(bool)
            if len(allowed) < len(scores):
                allowed = np.pad(allowed, (0, len(scores) - len(allowed)))
        scores[~allowed] = -np.inf
        return scores
