"""The S3 task in a work dir: every output of the contract, MLflow artifacts, and a re-run that embeds nothing and
keeps the cluster ids (fake embeddings by topic word; PCA instead of UMAP, so no numba compile)."""

import hashlib
import json
import uuid

import mlflow
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from components.core.config import resolve
from components.core.schema import write_records
from components.discover import clustering, embeddings
from components.discover.discovery import DiscoverConfig, HdbscanSettings
from tasks.discover import discover_task
from tasks.helpers.tracking import TrackingConfig
from tests.unit.discover.test_discover import call

TOPIC_WORDS = ["weather", "flight", "invoice"]


def fake_embed(texts, model_ref):
    centers = np.eye(16, dtype=np.float32)[:3] * 10
    rows = []
    for text in texts:
        topic = next((i for i, word in enumerate(TOPIC_WORDS) if word in text), None)
        # Seeded by the text's sha256 (Python's hash() is salted per process): the same text gets the same vector
        # in every run, so the data and the clusters are the same on every machine.
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        noise = np.random.default_rng(seed).normal(size=16).astype(np.float32)
        rows.append((centers[topic] if topic is not None else np.zeros(16, np.float32)) + noise)
    return np.asarray(rows)


def test_task_writes_the_workdir_contract_and_a_rerun_reuses_embeddings_and_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(embeddings, "embed_texts", fake_embed)
    monkeypatch.setattr(clustering, "default_reducer", lambda settings, n, seed: PCA(n_components=5, random_state=0))
    records = []
    for topic, size in enumerate([40, 30, 20]):
        for i in range(size):
            record = call(f"r{topic}{i:02d}", topic, i)
            request = record.messages[-1].model_copy(update={"content": f"{record.user_request} (case {i})"})
            records.append(record.model_copy(update={"messages": [record.messages[0], request]}))
    write_records(records, tmp_path / "data/curated/records.parquet")
    cfg = DiscoverConfig(hdbscan=HdbscanSettings(min_cluster_size=8, min_samples=4))
    tracking = TrackingConfig(experiment=f"s3-{uuid.uuid4().hex[:8]}")

    first = discover_task.fn(cfg, tmp_path, tracking)
    assert first["texts_embedded_now"] > 0 and first["clusters"] == 3 and first["kept_cluster_ids"] == 0
    assignments = pd.read_parquet(resolve(tmp_path, cfg.assignments))
    assert list(assignments.columns) == ["record_id", "cluster_id", "probability"] and len(assignments) == 90
    clusters = json.loads(resolve(tmp_path, cfg.clusters).read_text())
    for key in ("cluster_id", "label", "size", "fitness", "candidate", "convert", "examples", "output_kind"):
        assert all(key in c for c in clusters), key
    assert set(pd.read_parquet(resolve(tmp_path, cfg.splits)).split) <= {"train", "test", "outlier"}
    assert (resolve(tmp_path, cfg.model_dir) / "model.json").exists()
    assert resolve(tmp_path, cfg.cluster_map).read_bytes()[:4] == b"\x89PNG"
    page = resolve(tmp_path, cfg.report).read_text()
    assert "Examples" in page and "data:image/png;base64," in page

    second = discover_task.fn(cfg, tmp_path, tracking)
    assert second["texts_embedded_now"] == 0 and second["kept_cluster_ids"] == 3
    again = pd.read_parquet(resolve(tmp_path, cfg.assignments))
    assert again.equals(assignments)

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name(tracking.experiment).experiment_id])[0]
    logged = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"clusters.json", "clusters.html", "clusters_map.png", "cluster_model"} <= logged
    assert run.data.metrics["clusters"] == 3.0 and "cluster_0.fitness" in run.data.metrics
