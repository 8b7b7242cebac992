"""S5's loop over the leaderboard (components/finetune/cluster_training.py): which clusters train and why the others
do not, the training set written per cluster, and the summary lines; training itself is stood in for (what it
returns is what the loop reports), the real one runs in test_training_set.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.core.budget import TimeBudget
from components.core.schema import read_records
from components.core.step_files import FinetuneSummary, Leaderboard
from components.finetune.cluster_training import TrainingDirs, summary_entry, train_clusters
from components.finetune.train import FinetuneConfig, FinetuneResult
from tests.support.tiny_models import CITIES, weather_record

CALLS = [weather_record(index, city) for index, city in enumerate(CITIES * 2)]


def leaderboard(*clusters: dict) -> Leaderboard:
    return Leaderboard.model_validate({"clusters": list(clusters)})


def splits_for(cluster_ids: list[int]) -> pd.DataFrame:
    """Every call in each cluster: all but the last two for training, those two held out."""
    rows = []
    for cluster_id in cluster_ids:
        rows += [
            {"record_id": r.record_id, "cluster_id": cluster_id, "split": "test" if i >= len(CALLS) - 2 else "train"}
            for i, r in enumerate(CALLS)
        ]
    return pd.DataFrame(rows)


def run(tmp_path: Path, board: Leaderboard, cfg: FinetuneConfig | None = None, *, train=None, budget=None, writes=True):
    trained_calls: list[tuple[str, int]] = []
    said: list[str] = []

    def stand_in(base_ref, examples, cluster_cfg, output_dir, **kwargs) -> FinetuneResult:
        trained_calls.append((base_ref, len(examples)))
        return FinetuneResult(
            adapter_dir=str(output_dir),
            base_model=base_ref,
            steps=2,
            train_loss=0.5,
            seconds=2.0,
            trained_tokens=100,
            n_train=len(examples) - 1,
            too_long_record_ids=[examples[0].record_id],
        )

    summary = train_clusters(
        board,
        {r.record_id: r for r in CALLS},
        splits_for([c.cluster_id for c in board.clusters]),
        cfg or FinetuneConfig(),
        TrainingDirs(tmp_path / "adapters", tmp_path / "checkpoints", tmp_path / "sets"),
        budget=budget or TimeBudget(None, "S5", "finetune.time_budget_minutes"),
        record_trained=lambda trained: (
            summary_entry(trained, f"models:/{trained.cluster.cluster_id}", {}) if writes else None
        ),
        progress=lambda label: lambda *args: None,
        step_reporter=lambda label: lambda *args: None,
        say=said.append,
        writes=writes,
        train=train or stand_in,
    )
    return summary, trained_calls, said


def test_a_cluster_without_a_selected_slm_is_skipped_with_s4s_reason(tmp_path):
    board = leaderboard({"cluster_id": 3, "label": "w", "selected": None, "reason": "below the quality floor"})
    summary, trained_calls, _ = run(tmp_path, board)
    assert trained_calls == [] and summary.clusters == []
    assert summary.as_dict()["skipped"] == [
        {"cluster_id": 3, "label": "w", "reason": "no candidate SLM passed S4: below the quality floor"}
    ]


def test_a_spent_budget_trains_nothing_and_says_which_setting_to_raise(tmp_path):
    board = leaderboard({"cluster_id": 0, "label": "w", "selected": "tiny", "selected_ref": "ref"})
    summary, trained_calls, said = run(tmp_path, board, budget=TimeBudget(0, "S5", "finetune.time_budget_minutes"))
    assert trained_calls == [] and not (tmp_path / "sets").exists()
    (left,) = summary.skipped
    assert left.cluster_id == 0 and "finetune.time_budget_minutes" in left.reason
    assert any("not trained" in line for line in said)
    coverage = summary.coverage
    assert (coverage.candidate_clusters, coverage.trained_clusters, coverage.left_for_budget) == (1, 0, [0])
    assert (coverage.covered_train_calls, coverage.covered_share, coverage.served_by) == (0, 0.0, {0: None})


def test_a_cluster_training_refuses_stays_with_the_llm_and_the_next_one_trains(tmp_path):
    def refuses_cluster_0(base_ref, examples, cluster_cfg, output_dir, **kwargs):
        if output_dir.name == "cluster_0":
            raise ValueError("every call is longer than max_length")
        return FinetuneResult(adapter_dir=str(output_dir), base_model=base_ref, steps=1, train_loss=0.1)

    board = leaderboard(
        {"cluster_id": 0, "label": "a", "selected": "tiny", "selected_ref": "ref"},
        {"cluster_id": 1, "label": "b", "selected": "tiny", "selected_ref": "ref"},
    )
    summary, _, _ = run(tmp_path, board, train=refuses_cluster_0)
    assert [s.as_dict() for s in summary.skipped] == [
        {"cluster_id": 0, "label": "a", "reason": "every call is longer than max_length"}
    ]
    assert [c.cluster_id for c in summary.clusters] == [1]


def test_the_summary_says_which_share_of_the_candidates_training_calls_a_trained_adapter_covers(tmp_path):
    def refuses_cluster_1(base_ref, examples, cluster_cfg, output_dir, **kwargs):
        if output_dir.name == "cluster_1":
            raise ValueError("every call is longer than max_length")
        return FinetuneResult(adapter_dir=str(output_dir), base_model=base_ref, steps=1, train_loss=0.1)

    board = leaderboard(
        {"cluster_id": 0, "label": "a", "selected": "tiny", "selected_ref": "ref"},
        {"cluster_id": 1, "label": "b", "selected": "tiny", "selected_ref": "ref"},
        {"cluster_id": 2, "label": "c", "selected": None, "reason": "below the quality floor"},
    )
    summary, _, said = run(tmp_path, board, train=refuses_cluster_1)
    coverage = summary.coverage
    per_cluster = len(CALLS) - 2  # every call but the two held out trains, in each cluster (splits_for)
    # the cluster without a candidate is not a candidate; the refused one is a candidate left to the LLM
    assert (coverage.candidate_clusters, coverage.trained_clusters) == (2, 1)
    assert (coverage.candidate_train_calls, coverage.covered_train_calls) == (2 * per_cluster, per_cluster)
    assert coverage.covered_share == 0.5 and coverage.left_for_budget == []
    assert coverage.served_by == {0: str(tmp_path / "adapters/cluster_0"), 1: None}
    assert any("covered by a trained adapter (50%)" in line for line in said)
    assert FinetuneSummary.model_validate(summary.as_dict()) == summary


def test_a_trained_cluster_writes_its_set_and_its_line_counts_only_what_was_trained(tmp_path):
    board = leaderboard({"cluster_id": 5, "label": "weather", "selected": "tiny", "selected_ref": "ref"})
    summary, trained_calls, _ = run(tmp_path, board)
    (line,) = summary.clusters
    written = read_records(Path(line.training_set))
    trained = [r for r in written if r.metadata["use"] == "train"]
    assert trained_calls == [("ref", len(trained))]
    # the stand-in left the first example out as too long: the counts by origin leave it out too
    assert line.examples_by_origin == {"log": len(trained) - 1} and len(trained) == len(CALLS) - 2 - line.n_validation
    assert (line.label, line.model_uri, line.adapter_dir) == (
        "weather",
        "models:/5",
        str(tmp_path / "adapters/cluster_5"),
    )
    assert line.train_tokens_per_second == 50.0 and line.too_long_record_ids == [trained[0].record_id]
    # what is written is what is read back
    assert FinetuneSummary.model_validate(summary.as_dict()) == summary


def test_a_rank_that_does_not_write_trains_but_writes_no_set_and_no_line(tmp_path):
    board = leaderboard({"cluster_id": 0, "label": "w", "selected": "tiny", "selected_ref": "ref"})
    summary, trained_calls, _ = run(tmp_path, board, writes=False)
    assert len(trained_calls) == 1 and summary.clusters == [] and not (tmp_path / "sets").exists()
