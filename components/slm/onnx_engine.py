"""The ONNX Runtime GenAI engine, the default for ``serve-slm`` and S6 (wheels only: ``onnxruntime-genai``; its model
builder needs ``onnx`` and ``onnx-ir``).

- Model: the prepared Hugging Face folder (components/slm.prepare_model) with the cluster's LoRA, converted once by
  ``onnxruntime_genai.models.builder`` (float32, CPU) into ``cache_dir()/onnx``, in a child process (it holds the
  PyTorch model while it writes). The builder writes the LoRA into the graph beside the base weights, so each
  cluster is its own model (the base's ~0.5 GiB again per cluster, ~10 s to convert on 2 cores); runtime adapters
  (``og.Adapters``) need the LoRA weights as graph inputs, which this builder does not write. A whole fine-tuned
  model folder and the plain base convert the same way.
- Prompt and answer: components/slm's prompt (the adapter's prompt spec), tokenized by the Hugging Face tokenizer
  so every engine reads the same ids. Greedy decoding is driven from here, one step at a time: the step's logits
  are masked by the record's tool grammar (components/slm/grammar.py, the same llguidance grammar as eager), the
  best allowed token is taken and handed back to the generator (``set_logits`` with that token alone), and its
  log-probability renormalised over the allowed tokens is kept, as eager's ``TokenLogprobs`` does: the confidence
  features (components/slm/confidence.py) the selective gate reads come from the engine that serves.
- Batches: the prompts are right-padded with a pad id no prompt of the batch holds (the runtime masks that id as
  padding), so a batch of 8 answers as 8 single calls do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from components.core.machine import cpu_model
from components.core.schema import CallRecord
from components.slm.engine_protocol import ServedAdapter, folder_key

ONNX_ENGINE = "onnxruntime-genai"


def available() -> str | None:
    """None when the engine can run here, else why not."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return "onnxruntime-genai is not installed (it is a dependency of llm2slm: make setup)"
    return None


def _onnx_dir() -> Path:
    from components.core.assets import cache_dir

    return cache_dir() / "onnx"


def convert(base_folder: str, adapter_dir: str | None, target: Path) -> Path:
    """``target``: the ONNX model of ``base_folder`` with the LoRA in ``adapter_dir`` (None: the base alone),
    converted once (an existing ``target`` is reused). Its pad id is the vocabulary's last id, which
    :meth:`OnnxGenaiEngine.generate` checks no prompt of a batch holds."""
    if (target / "genai_config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", base_folder, "-o", str(partial),
               "-p", "fp32", "-e", "cpu", "-c", str(partial / "cache")]  # fmt: skip
    if adapter_dir is not None:
        command += ["--extra_options", f"adapter_path={adapter_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not (partial / "genai_config.json").exists():
        raise RuntimeError(f"onnxruntime-genai's model builder failed: {done.stderr.strip()[-1500:]}")
    config_path = partial / "genai_config.json"
    config = json.loads(config_path.read_text())
    # The builder takes the tokenizer's pad id, which for ChatML models is <|im_end|>: in every prompt, so the
    # runtime would mask real tokens as padding. The vocabulary's last id stands for padding instead.
    config["model"]["pad_token_id"] = int(config["model"]["vocab_size"]) - 1
    config_path.write_text(json.dumps(config, indent=2))
    shutil.rmtree(partial / "cache", ignore_errors=True)  # the builder's scratch
    partial.rename(target)
    return target


class OnnxGenaiEngine:
    """See the module docstring; all calls on one thread (the server's worker)."""

    name = ONNX_ENGINE

    def __init__(self, threads: int | None = None) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.threads = threads
        self._loaded: dict[ServedAdapter, dict[str, Any]] = {}  # served -> model, tokenizer, spec, pad id

    def _folders(self, served: ServedAdapter) -> tuple[str, str | None, str]:
        """(base folder to convert, LoRA folder or None, the folder whose tokenizer and prompt spec answer)."""
        from components.slm import prepare_model

        adapter = served.adapter_dir
        if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
            return str(adapter), None, str(adapter)  # a whole fine-tuned model
        base = prepare_model(served.base_model)
        return base, adapter, adapter or base

    def load(self, served: ServedAdapter) -> None:
        if served in self._loaded:
            return
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        from components.slm.prompt_pruning import load_prompt_spec

        base, adapter, answering = self._folders(served)
        name = f"{Path(base).name}-{folder_key(base)}"
        if adapter is not None:
            name += f"-lora-{Path(adapter).name}-{folder_key(adapter)}"
        folder = convert(base, adapter, _onnx_dir() / name)
        config = og.Config(str(folder))
        if self.threads:
            session = {"session_options": {"intra_op_num_threads": self.threads}}
            config.overlay(json.dumps({"model": {"decoder": session}}))
        model = og.Model(config)
        settings = json.loads((folder / "genai_config.json").read_text())["model"]
        self._loaded[served] = {
            "model": model,
            "tokenizer": AutoTokenizer.from_pretrained(answering),
            "spec": load_prompt_spec(answering),
            "pad_id": settings["pad_token_id"],
            "context": max(settings["context_length"], 1),
            "folder": str(folder),
        }

    def unload(self, served: ServedAdapter) -> None:
        self._loaded.pop(served, None)

    @property
    def loaded(self) -> list[ServedAdapter]:
        """What is in memory now (one model per (base, adapter): the builder writes the LoRA into the graph)."""
        return list(self._loaded)

    def generate(self, served: ServedAdapter, records: list[CallRecord], max_new_tokens: int) -> list[Any]:
        """Greedy answers under the tool grammar, in the given order; a batch's latency is its wall time shared
        evenly (as eager's), ``first_token_ms`` its first step's."""
        from components.slm.generation import _stop_token_ids
        from components.slm.prompt import render_prompt

        self.load(served)
        entry = self._loaded[served]
        tokenizer, spec = entry["tokenizer"], entry["spec"]
        stop_ids = _stop_token_ids(tokenizer)
        budget = min(max_new_tokens, spec.max_answer_tokens) if spec and spec.max_answer_tokens else max_new_tokens
        prompts = [tokenizer(render_prompt(tokenizer, r, spec), add_special_tokens=False)["input_ids"] for r in records]
        # A prompt holding the pad id would be masked where it has it: it answers alone (no padding then).
        together = [i for i, prompt in enumerate(prompts) if entry["pad_id"] not in prompt]
        groups = [together] if together else []
        groups += [[i] for i in range(len(prompts)) if i not in set(together)]
        results: list[Any] = [None] * len(records)
        for group in groups:
            for index, generation in zip(
                group, self._answer(entry, [records[i] for i in group], [prompts[i] for i in group], stop_ids, budget)
            ):
                results[index] = generation
        return results

    def _answer(self, entry: dict[str, Any], records: list[CallRecord], prompts: list[list[int]],
                stop_ids: list[int], budget: int) -> list[Any]:  # fmt: skip
        from components.slm.confidence import answer_confidence
        from components.slm.generation import Generation, token_offsets
        from components.slm.grammar import tool_matcher

        tokenizer, spec = entry["tokenizer"], entry["spec"]
        required = spec is not None and spec.answers == "tool_calls"
        max_calls = spec.max_tool_calls if spec is not None else None
        matchers = [tool_matcher(tokenizer, stop_ids, r.tools, required, max_calls) for r in records]
        began = time.perf_counter()
        reuse = entry if len(prompts) == 1 else None  # one call at a time: the previous call's prompt cache
        tokens, logprobs, first_token_ms = _decode(entry["model"], entry["pad_id"], prompts, matchers, stop_ids, budget,
                                                   reuse)  # fmt: skip
        latency_ms = (time.perf_counter() - began) * 1000 / len(records)
        answers = []
        for row, prompt in enumerate(prompts):
            decoded = tokenizer.decode(tokens[row], skip_special_tokens=True)
            offsets = token_offsets(tokenizer, tokens[row])
            generation = Generation(
                text=decoded.strip(),
                latency_ms=latency_ms,
                prompt_tokens=len(prompt),
                completion_tokens=len(tokens[row]),
                confidence=answer_confidence(decoded, offsets, logprobs[row]),
                token_logprobs=[
                    (decoded[offsets[i] : offsets[i + 1]], logprobs[row][i])
                    for i in range(len(tokens[row]))
                    if tokens[row][i] not in stop_ids
                ],
            )
            generation.first_token_ms = first_token_ms  # type: ignore[attr-defined]
            answers.append(generation)
        return answers

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        from components.slm.grammar import available as grammar_available

        return {
            "engine": self.name,
            "dtype": "float32",
            "device": "cpu",
            "threads": self.threads or os.cpu_count(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "constrained_decoding": grammar_available(),
            "versions": {package: version(package) for package in ("onnxruntime-genai", "onnxruntime")},
        }


def _generator(model: Any, pad_id: int, prompts: list[list[int]], budget: int, reuse: dict[str, Any] | None) -> Any:
    """A generator holding the prompts. With ``reuse`` (one call), the previous single call's generator is rewound
    to the longest prefix both prompts share and only the rest is forwarded: a cluster's calls open alike (tool
    list, instructions), and that prefix's KV cache is the same whatever follows it."""
    import numpy as np
    import onnxruntime_genai as og

    if reuse is not None and reuse.get("generator") is not None:
        held, prompt = reuse["held"], prompts[0]
        common = 0
        limit = min(len(held), len(prompt) - 1)  # at least one token is forwarded, for the next logits
        while common < limit and held[common] == prompt[common]:
            common += 1
        if common and len(prompt) + budget <= reuse["max_length"]:
            generator = reuse["generator"]
            generator.rewind_to(common)
            generator.append_tokens(np.array([prompt[common:]], dtype=np.int32))
            return generator
    longest = max(len(prompt) for prompt in prompts)
    padded = np.full((len(prompts), longest), pad_id, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        padded[row, : len(prompt)] = prompt
    # A reused generator keeps room for longer prompts than this one (its KV buffer is sized by max_length).
    max_length = longest + budget if reuse is None else min(reuse["context"], max(2048, 2 * (longest + budget)))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, do_sample=False, batch_size=len(prompts))
    generator = og.Generator(model, params)
    generator.append_tokens(padded)
    if reuse is not None:
        reuse.update(generator=generator, max_length=max_length)
    return generator


def _decode(model: Any, pad_id: int, prompts: list[list[int]], matchers: list[Any], stop_ids: list[int],
            budget: int, reuse: dict[str, Any] | None = None) -> tuple[list[list[int]], list[list[float]], float]:  # fmt: skip
    """Each row's greedy tokens (its stop token included) and their log-probabilities renormalised over what the
    row's grammar allowed, and the first step's time in ms."""
    import numpy as np

    from components.slm.grammar import allowed_tokens

    began = time.perf_counter()
    generator = _generator(model, pad_id, prompts, budget, reuse)
    if reuse is not None:
        reuse["held"] = []  # unknown while the generator changes: a failure below leaves nothing to reuse
    tokens: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    first_token_ms = 0.0
    for step in range(budget):
        logits = np.array(generator.get_logits(), dtype=np.float32).reshape(len(prompts), -1)
        if step == 0:
            first_token_ms = (time.perf_counter() - began) * 1000
        chosen = np.full((len(prompts), logits.shape[1]), -np.inf, dtype=np.float32)
        for row, matcher in enumerate(matchers):
            token = stop_ids[0]
            if not done[row]:
                scores = logits[row]
                if matcher is not None and not matcher.is_error():
                    scores = np.where(allowed_tokens(matcher, len(scores), stop_ids), scores, -np.inf)
                token = int(scores.argmax())
                top = float(scores[token])
                logprobs[row].append(-float(np.log(np.exp(scores - top).sum())))
                tokens[row].append(token)
                done[row] = token in stop_ids
                if matcher is not None and not done[row] and not matcher.is_stopped():
                    matcher.consume_token(token)
            chosen[row, token] = 0.0  # the generator takes this row's token, and only it
        if all(done) or step == budget - 1:
            break
        generator.set_logits(chosen)
        generator.generate_next_token()
    if reuse is not None:  # what the generator holds: the prompt and the answer but its last token
        reuse["held"] = prompts[0] + tokens[0][:-1]
    return tokens, logprobs, first_token_ms
