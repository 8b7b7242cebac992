"""The promotion gate (pure) and the registry lifecycle: challenger on registration, champion by promotion,
rollback to the previous champion."""

import uuid

import mlflow
import pytest

from components.promotion import GateScores, PromotionPolicy, decide_promotion

POLICY = PromotionPolicy(floor_vs_llm=0.3, min_gain_over_champion=0.05, min_gain_over_base=0.0, max_regression=0.0)


def test_params_sections_of_the_gate_and_the_refresh_validate():
    from pathlib import Path

    from components.config import load_params, load_section
    from components.refresh import RefreshConfig

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert load_section(params, "promotion", PromotionPolicy).min_gain_over_champion > 0
    assert load_section(params, "refresh", RefreshConfig).drift.psi_threshold > 0


def test_better_challenger_is_promoted_with_every_check_in_the_reason():
    decision = decide_promotion(GateScores(llm=1.0, challenger=0.7, champion=0.6, challenger_regression=0.8,
                                           champion_regression=0.8), POLICY, "full_call_match")
    assert decision.promote and decision.checks == {"floor_vs_llm": True, "beats_champion": True,
                                                    "no_regression": True}
    assert decision.reason.startswith("promoted: full_call_match 0.700")


@pytest.mark.parametrize("scores, failed", [
    (GateScores(llm=1.0, challenger=0.62, champion=0.6), "beats_champion"),        # within the margin
    (GateScores(llm=1.0, challenger=0.25, champion=0.1), "floor_vs_llm"),          # below the LLM floor
    (GateScores(llm=1.0, challenger=0.9, champion=0.6, challenger_regression=0.5, champion_regression=0.7),
     "no_regression"),
    (GateScores(llm=1.0, challenger=0.4, base=0.4), "beats_base"),                 # no champion: vs base
])
def test_challenger_failing_a_check_stays_challenger_and_says_which(scores, failed):
    decision = decide_promotion(scores, POLICY)
    assert not decision.promote and not decision.checks[failed]
    assert decision.reason.startswith("not promoted (") and failed in decision.reason.split(":")[0]


def test_first_challenger_needs_only_the_floor_and_the_base():
    assert decide_promotion(GateScores(llm=1.0, challenger=0.4, base=0.0), POLICY).promote


def test_register_promote_and_roll_back_move_the_aliases(tmp_path, monkeypatch):
    from tasks.registry import champion_history, champion_version, promote, rollback

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = f"rollback-{uuid.uuid4().hex[:6]}"
    source = tmp_path / "model"
    source.mkdir()
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    versions = [str(client.create_model_version(name, source.as_uri()).version) for _ in range(3)]
    assert champion_version(name) is None
    promote(name, versions[0], "first")
    with pytest.raises(ValueError, match="no previous champion"):
        rollback(name)
    promote(name, versions[2], "better")
    assert champion_version(name) == versions[2] and champion_history(name) == [versions[0], versions[2]]
    assert client.get_model_version(name, versions[2]).tags["promotion_reason"] == "better"
    assert rollback(name) == (versions[2], versions[0])
    assert champion_version(name) == versions[0]
    assert str(client.get_model_version_by_alias(name, "challenger").version) == versions[2]
    assert champion_version("no-such-model") is None
