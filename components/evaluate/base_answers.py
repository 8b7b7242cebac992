"""The base SLM's answers on a cluster's held-out calls, for S6's comparison.

S4 answered the held-out calls zero-shot with the selected candidate, greedily, and S6 reuses those answers. Since
issue 30 S4 answers only a sample when it has nothing to choose between (one candidate) or when one candidate leads
clearly early: S6 then generates the base's answers to the rest itself, so every system is scored on every
held-out call.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from components.core.schema import CallRecord
from components.evaluate.evaluation import EvaluateConfig
from components.slm.generation import ProgressCallback, generate_answers

Answer = tuple[str, float]  # the raw completion and its latency in ms


def base_answers(
    test_records: list[CallRecord],
    predictions: pd.DataFrame,
    cluster_id: int,
    candidate: str,
    base_model: str,
    cfg: EvaluateConfig,
    progress: ProgressCallback | None = None,
    generate: Callable[..., list[tuple]] = generate_answers,
) -> tuple[list[Answer], int]:
    """(the base's answer to each held-out call in order, how many were generated here): S4's answers of the
    ``candidate`` where it made them, the others generated now from ``base_model`` (zero-shot, the full prompt, as
    S4 answers) with S6's generation settings."""
    mine = predictions[(predictions.cluster_id == cluster_id) & (predictions.candidate == candidate)]
    known = {row.record_id: (str(row.text), float(row.latency_ms)) for row in mine.itertuples()}
    missing = [record for record in test_records if record.record_id not in known]
    if missing:
        generated = generate(
            base_model,
            missing,
            cfg.max_new_tokens,
            cfg.batch_size,
            progress,
            constrain_tool_calls=cfg.constrained_decoding,
        )
        if len(generated) != len(missing):
            raise ValueError(f"the base answered {len(generated)} of {len(missing)} held-out calls")
        known.update({record.record_id: (answer[0], float(answer[1])) for record, answer in zip(missing, generated)})
    return [known[record.record_id] for record in test_records], len(missing)
