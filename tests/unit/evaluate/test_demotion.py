"""Demotion: the gate's rule on audited calls, and the registry rollback the task layer applies after the router
demoted a cluster (the router's side, through the proxy: tests/unit/serve/test_audit_and_demotion.py)."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest

from components.core.clusters import registered_name
from components.evaluate.demotion import (
    AuditedFigures,
    demotion_line,
    demotion_reason,
    pending_demotions,
    read_log,
)
from components.evaluate.promotion import PromotionPolicy, SelectiveScores, served_at_parity
from components.evaluate.promotion_log import append_promotion_events
from components.evaluate.selective import wilson_interval

POLICY = PromotionPolicy(parity=0.9, min_test_calls=20)


@pytest.mark.parametrize(
    ("calls", "hits", "demoted"),
    [(19, 0, False), (20, 18, False), (20, 17, True), (40, 35, True), (40, 36, False)],
)
def test_a_cluster_is_demoted_on_the_gates_rule_with_enough_audited_calls(calls, hits, demoted):
    audited = AuditedFigures(calls, hits)
    assert (demotion_reason(audited, POLICY) is not None) is demoted
    # One rule: the gate's check 5 on the same figures says the opposite of "demote" once there are enough calls.
    checks = served_at_parity(audited.accuracy, calls, 1.0, POLICY)
    assert demoted == (checks["enough_accepted_calls"] and not checks["accepted_parity"])


def test_the_gate_and_the_demotion_share_the_parity_rule():
    from components.evaluate.promotion import GateScores, decide_promotion

    scores = GateScores(llm=1.0, challenger=0.5, n_test=40, base=0.1, selective=SelectiveScores(0.85, 20, 0.5))
    decision = decide_promotion(scores, POLICY)
    assert decision.mode == "shadow" and decision.selective_checks["accepted_parity"] is False
    assert demotion_reason(AuditedFigures(20, 17), POLICY) is not None  # 0.85 on 20 calls: the same verdict


def test_the_demotion_line_carries_the_figures_and_is_applied_once(tmp_path):
    log = tmp_path / "promotions.jsonl"
    audited = AuditedFigures(20, 10)
    line = demotion_line(3, "selective", audited, demotion_reason(audited, POLICY))
    assert line["audited_interval"] == wilson_interval(10, 20) and line["to_mode"] == "shadow"
    append_promotion_events(log, [{"refresh": 1, "cluster_id": 3, "promoted": True, "reason": "promoted"}])
    append_promotion_events(log, [line])
    assert [row["cluster_id"] for row in pending_demotions(read_log(log))] == [3]
    append_promotion_events(
        log, [{"event": "demotion_applied", "cluster_id": 3, "demotion_timestamp": line["timestamp"]}]
    )
    assert pending_demotions(read_log(log)) == []


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    source = tmp_path / "model"
    source.mkdir()
    return f"demote-{uuid.uuid4().hex[:6]}", source.as_uri()


def test_a_logged_demotion_rolls_the_champion_back_once(registry, tmp_path):
    from tasks.demotions import apply_demotions
    from tasks.helpers.registry import champion_version, promote

    prefix, source = registry
    client = mlflow.MlflowClient()
    on_cluster, alone_cluster = registered_name(prefix, 0), registered_name(prefix, 1)
    for name in (on_cluster, alone_cluster):
        client.create_registered_model(name)
    first, second = (str(client.create_model_version(on_cluster, source).version) for _ in range(2))
    promote(on_cluster, first, "first")
    promote(on_cluster, second, "better")
    only = str(client.create_model_version(alone_cluster, source).version)
    promote(alone_cluster, only, "first")
    log = tmp_path / "promotions.jsonl"
    for cluster_id in (0, 1):
        audited = AuditedFigures(20, 5)
        append_promotion_events(log, [demotion_line(cluster_id, "on", audited, demotion_reason(audited, POLICY))])

    applied = apply_demotions(log, prefix)
    # Cluster 0 goes back to its previous champion; cluster 1 had none: its champion alias is removed.
    assert [(a["cluster_id"], a["from_version"], a["to_version"]) for a in applied] == [
        (0, second, first),
        (1, only, None),
    ]
    assert champion_version(on_cluster) == first and champion_version(alone_cluster) is None
    assert str(client.get_model_version_by_alias(alone_cluster, "challenger").version) == only
    assert apply_demotions(log, prefix) == []  # applied once: a second refresh moves nothing
    assert [json.loads(text)["event"] for text in log.read_text().splitlines()][-2:] == ["demotion_applied"] * 2


def test_the_refresh_holds_out_audited_calls_first_and_trains_on_deferred_ones():
    import pandas as pd

    from components.core.clusters import ClusterSummary
    from components.evaluate.refresh import RetrainPolicy, plan_retraining, refresh_splits

    ids = [f"a{i}" for i in range(3)] + [f"d{i}" for i in range(4)] + [f"l{i}" for i in range(3)]
    origins = {r: {"a": "audited", "d": "deferred", "l": "log"}[r[0]] for r in ids}
    assignments = pd.DataFrame({"record_id": ["old", *ids], "cluster_id": [0] * (len(ids) + 1)})
    for held_out in (3, 6):
        splits = refresh_splits(assignments, set(ids), {}, held_out, seed=1, refresh_number=2, origins=origins)
        test = set(splits[splits.split == "test"].record_id)
        # The audited calls first, then the logged ones; the deferred calls all train (the SLM learns them).
        assert {origins[r] for r in test} == ({"audited"} if held_out == 3 else {"audited", "log"})
        assert all(origins[r] != "deferred" for r in test) and len(test) == held_out
    cluster = ClusterSummary(cluster_id=0, label="weather", size=11, output_kind="tool_call")
    state = {"0": {"trained_on": 10, "champion_score": 0.9}}
    assert plan_retraining([cluster], state, {0: 10}, {0: 0.9}, RetrainPolicy()) == {}
    plan = plan_retraining([cluster], state, {0: 10}, {0: 0.9}, RetrainPolicy(), demoted=[0])
    assert plan[0].startswith("demoted by the router")


def test_the_refresh_markdown_shows_audited_accuracy_demotions_and_served_coverage():
    from components.evaluate.flow_summary import RunLink, refresh_markdown

    audited = AuditedFigures(20, 15)
    summary = {
        "refresh": 4,
        "audited": {"2": {"audited_calls": 20, "audited_accuracy": 0.75, "audited_interval": audited.interval}},
        "demotions": [{"cluster_id": 2, "alias_moved": True, "from_version": "3", "to_version": "1"}],
        "coverage": {"2": {"served_at_parity": {"challenger": 0.4, "champion": 0.0}}},
    }
    text = refresh_markdown(summary, RunLink("run", "sqlite:///m.db"))
    low, high = audited.interval
    assert f"- cluster 2 audited: accuracy 0.750 [{low:.2f}-{high:.2f}] on 20 audited calls" in text
    assert "- cluster 2 demoted by the router (audited calls below parity): champion v3 -> v1" in text
    assert "- cluster 2 calls served at parity: challenger 0.40, champion 0.00" in text
