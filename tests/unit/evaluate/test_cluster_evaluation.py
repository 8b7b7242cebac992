"""S6's loop over S5's trained clusters (components/evaluate/cluster_evaluation.py): the base SLM's answers are the
ones S4 kept for the selected candidate, the fine-tuned SLM answers each held-out call once, and each cluster's
entry, rows and predictions come out in S5's order; the clusters S5 skipped are counted with its reason."""

from __future__ import annotations

import pandas as pd

from components.core.step_files import FinetuneSummary, Leaderboard
from components.evaluate.cluster_evaluation import evaluate_trained_clusters, not_converted
from components.evaluate.evaluation import EvaluateConfig
from components.slm.prompt import render_target
from tests.support.tiny_models import CITIES, weather_record

RECORDS = [weather_record(i, f"{CITIES[i % len(CITIES)]} {i}") for i in range(12)]


def splits() -> pd.DataFrame:
    """Cluster 0: calls 0-3 train, 4-5 test; cluster 1: calls 6-9 train, 10-11 test."""
    rows = [{"record_id": f"r{i}", "cluster_id": i // 6, "split": "test" if i % 6 >= 4 else "train"} for i in range(12)]
    return pd.DataFrame(rows)


def base_predictions() -> pd.DataFrame:
    """S4's answers: the selected candidate `tiny` right on every call, another candidate wrong."""
    rows = []
    for record in RECORDS:
        cluster_id = int(record.record_id[1:]) // 6
        rows.append([cluster_id, "tiny", record.record_id, render_target(record.response), 7.0])
        rows.append([cluster_id, "other", record.record_id, "no", 1.0])
    return pd.DataFrame(rows, columns=["cluster_id", "candidate", "record_id", "text", "latency_ms"])


def test_each_trained_cluster_is_scored_on_its_held_out_calls_with_s4s_base_answers():
    cluster = {"label": "get_weather", "output_kind": "tool_call", "selected": "tiny", "selected_ref": "ref"}
    leaderboard = Leaderboard.model_validate(
        {"clusters": [{"cluster_id": 0, **cluster}, {"cluster_id": 1, **cluster}, {"cluster_id": 2, "label": "x"}]}
    )
    trained = {"n_train": 4, "base_model": "base", "model_uri": "m"}
    summary = FinetuneSummary.model_validate(
        {
            "clusters": [
                {"cluster_id": 1, **trained, "adapter_dir": "a1"},
                {"cluster_id": 0, **trained, "adapter_dir": "a0"},
            ],
            "skipped": [{"cluster_id": 2, "label": "x", "reason": "no candidate SLM passed S4: floor"}],
        }
    )
    asked: list[tuple[str, list[str], str]] = []

    def answer_tuned(model, calls, label):
        """Right on the first held-out call only, sure of neither answer."""
        asked.append((model.adapter_dir, [r.record_id for r in calls], label))
        return [(render_target(r.response) if i == 0 else "no idea", 3.0, None) for i, r in enumerate(calls)]

    records = {r.record_id: r for r in RECORDS}
    done = list(
        evaluate_trained_clusters(
            leaderboard, summary, records, splits(), base_predictions(), EvaluateConfig(), answer_tuned
        )
    )

    assert asked == [("a1", ["r10", "r11"], "S6 cluster #1"), ("a0", ["r4", "r5"], "S6 cluster #0")]
    assert [d.entry["cluster_id"] for d in done] == [1, 0]
    for evaluated in done:
        assert evaluated.entry["scores"]["slm_base"]["full_call_match"] == 1.0  # `tiny`'s answers, not `other`'s
        assert evaluated.entry["scores"]["slm_finetuned"]["full_call_match"] == 0.5
        assert len(evaluated.call_rows) == 2 and len(evaluated.train_records) == 4
    assert [row["record_id"] for row in done[0].prediction_rows()] == ["r10", "r11"]
    assert done[0].prediction_rows()[1] == {"record_id": "r11", "cluster_id": 1, "text": "no idea", "latency_ms": 3.0}
    assert not_converted(summary) == [{"cluster_id": 2, "reason": "no candidate SLM passed S4: floor"}]
