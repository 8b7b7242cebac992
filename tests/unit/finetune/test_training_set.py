"""S5's training set: logged calls, augmentation and teacher examples with their origin; validation and held-out
calls never feed augmentation; the set is written per cluster and counted by origin in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.core.schema import ChatMessage, read_records, write_records, write_table
from components.finetune.augment import AugmentationSettings
from components.finetune.dataset import build_training_set
from components.finetune.synthesis import SynthesisSettings
from components.finetune.train import FinetuneConfig, LoraSettings
from tasks.helpers.tracking import TrackingConfig
from tests.support.tiny_models import CITIES, weather_record


def logged_call(index: int, city: str):
    """A weather call whose request is unique (a request number), so a new city makes a new example."""
    record = weather_record(index, city)
    request = ChatMessage(role="user", content=f"Request {index}: what is the weather in {city}?")
    return record.model_copy(update={"messages": [record.messages[0], request]})


LOGGED = [logged_call(index, city) for index, city in enumerate(CITIES * 3)]  # 24 calls: a validation split


def test_validation_is_carved_from_logged_calls_before_augmentation():
    training = build_training_set(
        LOGGED,
        [],
        FinetuneConfig(
            validation_fraction=0.2,
            min_validation_records=4,
            min_records_for_validation=20,
            seed=1,
            augmentation=AugmentationSettings(enabled=True, copies=2),
        ),
    )
    validation_ids = {r.record_id for r in training.validation}
    augmented = [r for r in training.examples if r.metadata["origin"] == "augmented"]
    assert len(validation_ids) == 5 and {r.metadata["origin"] for r in training.validation} == {"log"}
    assert augmented and not {r.metadata["augmented_from"] for r in augmented} & validation_ids
    assert training.examples_by_origin == {"log": 19, "augmented": len(augmented)}
    assert training.augmentation["examples"] == len(augmented) and training.synthesis == {}


def test_synthesis_without_an_anonymizer_is_refused():
    with pytest.raises(ValueError, match="anonymizer"):
        build_training_set(
            LOGGED,
            [],
            FinetuneConfig(synthesis=SynthesisSettings(enabled=True, base_url="http://127.0.0.1:9/v1", model="m")),
        )


def test_task_writes_the_training_set_and_no_held_out_text_reaches_it(tiny_model_dir, tmp_path, monkeypatch):
    from tasks.finetune import finetune_task

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    held_out = [logged_call(100 + i, city) for i, city in enumerate(["Reykjavik", "Nairobi", "Hanoi"])]
    write_records(LOGGED[:8] + held_out, tmp_path / "data/curated/records.parquet")
    write_table(
        pd.DataFrame(
            {
                "record_id": [r.record_id for r in LOGGED[:8] + held_out],
                "cluster_id": 0,
                "split": ["train"] * 8 + ["test"] * 3,
            }
        ),
        tmp_path / "data/splits/splits.parquet",
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/leaderboard.json").write_text(
        json.dumps({"clusters": [{"cluster_id": 0, "label": "w", "selected": "tiny", "selected_ref": tiny_model_dir}]})
    )
    cfg = FinetuneConfig(
        max_steps=1,
        max_length=256,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        augmentation=AugmentationSettings(enabled=True, copies=2),
    )
    summary = finetune_task.fn(cfg, tmp_path, TrackingConfig(experiment="s5-set"))
    (entry,) = summary["clusters"]
    written = read_records(Path(entry["training_set"]))
    trained = [r for r in written if r.metadata["use"] == "train"]
    assert (
        entry["examples_by_origin"]
        == {"log": 8, "augmented": 16}
        == {origin: sum(r.metadata["origin"] == origin for r in trained) for origin in ("log", "augmented")}
    )
    assert entry["n_train"] == 24 and entry["train_tokens_per_second"] > 0
    text = json.dumps([r.model_dump(mode="json") for r in written])
    assert not any(city in text for city in ("Reykjavik", "Nairobi", "Hanoi"))


def test_a_spent_time_budget_leaves_the_cluster_untrained_with_the_reason(tiny_model_dir, tmp_path, monkeypatch):
    from tasks.finetune import finetune_task

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_records(LOGGED[:4], tmp_path / "data/curated/records.parquet")
    write_table(
        pd.DataFrame({"record_id": [r.record_id for r in LOGGED[:4]], "cluster_id": 0, "split": "train"}),
        tmp_path / "data/splits/splits.parquet",
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/leaderboard.json").write_text(
        json.dumps({"clusters": [{"cluster_id": 0, "label": "w", "selected": "tiny", "selected_ref": tiny_model_dir}]})
    )
    summary = finetune_task.fn(FinetuneConfig(time_budget_minutes=0), tmp_path, TrackingConfig(experiment="s5-b"))
    assert summary["clusters"] == []
    (left,) = summary["skipped"]
    assert left["cluster_id"] == 0 and "finetune.time_budget_minutes" in left["reason"]
    assert not (tmp_path / "models/adapters/cluster_0").exists()
