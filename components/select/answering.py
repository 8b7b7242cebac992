"""S4's answerer: each catalog candidate loaded once (one in memory at a time, reused for every cluster and mode)
and asked to answer a cluster's held-out calls, with the process's peak resident memory sampled while it answers.

Framework-free: the task hands in how to report progress (a ``(label, total) -> (done, total)`` factory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from components.core.schema import CallRecord
from components.select.benchmark import Answer, Answerer, Answers
from components.slm.catalog import CatalogEntry, install_chat_template
from components.slm.generation import ProgressCallback, generate
from components.slm.loading import load_model, prepare_model

ProgressFactory = Callable[[str, int], ProgressCallback]  # (label, records in all) -> progress callback


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def load_candidate(entry: CatalogEntry):
    """(model, tokenizer) of a catalog entry; a model without a chat template gets the catalog's one first."""
    if entry.template is not None:
        folder = prepare_model(entry.ref)
        if Path(folder).is_dir():
            install_chat_template(folder, entry.template)
    return load_model(entry.ref)


def candidate_answerer(
    batch_size: int,
    constrained_decoding: bool,
    progress_for: ProgressFactory,
    load: Callable[[CatalogEntry], tuple] = load_candidate,
    run: Callable[..., list] = generate,
    memory_mb: Callable[[], float] = rss_mb,
) -> Answerer:
    """The :data:`Answerer` that S4's benchmark calls; ``load``, ``run`` and ``memory_mb`` are the model loading,
    the generation (:func:`components.slm.generation.generate`) and the memory probe, swapped in tests."""
    loaded: dict[str, tuple] = {}  # one candidate in memory at a time, loaded once for every cluster and mode

    def answer(
        entry: CatalogEntry,
        records: list[CallRecord],
        max_new_tokens: int,
        calls_only: bool,
        max_calls: int | None = None,
    ) -> Answers:
        if entry.name not in loaded:
            loaded.clear()
            loaded[entry.name] = load(entry)
        model, tokenizer = loaded[entry.name]
        peak = [memory_mb()]
        progress = progress_for(f"S4 {entry.name}", len(records))

        def sample(done: int, total: int) -> None:
            peak.append(memory_mb())  # after each batch: the KV cache of the batch is still alive
            progress(done, total)

        generations = run(
            model,
            tokenizer,
            records,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=sample,
            constrain_tool_calls=constrained_decoding,
            require_tool_calls=calls_only,
            max_tool_calls=max_calls,
        )
        return Answers([Answer(g.text, g.latency_ms, g.completion_tokens) for g in generations], max(peak))

    return answer
