"""The promotion gate (pure) and the registry lifecycle: challenger on registration, champion by promotion,
rollback to the previous champion."""

import uuid

import mlflow
import pytest

from components.evaluate.promotion import GateScores, PromotionPolicy, decide_promotion

POLICY = PromotionPolicy(
    parity=0.3, min_test_calls=10, min_gain_over_champion=0.05, min_gain_over_base=0.0, max_regression=0.0
)
N = 20  # held-out calls, above the policy's minimum


def test_params_sections_of_the_gate_and_the_refresh_validate():
    from pathlib import Path

    from components.core.config import load_params, load_section
    from components.evaluate.refresh import RefreshConfig

    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml")
    assert load_section(params, "promotion", PromotionPolicy).min_gain_over_champion > 0
    assert load_section(params, "refresh", RefreshConfig).drift.psi_threshold > 0


def test_better_challenger_is_promoted_with_every_check_in_the_reason():
    decision = decide_promotion(
        GateScores(llm=1.0, challenger=0.7, n_test=N, champion=0.6, challenger_regression=0.8, champion_regression=0.8),
        POLICY,
        "full_call_match",
    )
    assert decision.promote and decision.checks == {
        "enough_test_calls": True,
        "parity": True,
        "beats_champion": True,
        "no_regression": True,
    }
    assert decision.reason.startswith("promoted: 20 held-out calls ≥ 10; full_call_match 0.700")


@pytest.mark.parametrize(
    "scores, failed",
    [
        (GateScores(llm=1.0, challenger=0.62, n_test=N, champion=0.6), "beats_champion"),  # within the margin
        (GateScores(llm=1.0, challenger=0.25, n_test=N, champion=0.1), "parity"),  # below parity × the LLM
        (GateScores(llm=1.0, challenger=0.9, n_test=9, champion=0.1), "enough_test_calls"),  # too few calls
        (
            GateScores(
                llm=1.0, challenger=0.9, n_test=N, champion=0.6, challenger_regression=0.5, champion_regression=0.7
            ),
            "no_regression",
        ),
        (GateScores(llm=1.0, challenger=0.4, n_test=N, base=0.4), "beats_base"),  # no champion: vs base
    ],
)
def test_challenger_failing_a_check_stays_challenger_and_says_which(scores, failed):
    decision = decide_promotion(scores, POLICY)
    assert not decision.promote and not decision.checks[failed]
    assert decision.reason.startswith("not promoted (") and failed in decision.reason.split(":")[0]


def test_first_challenger_needs_only_parity_enough_calls_and_the_base():
    assert decide_promotion(GateScores(llm=1.0, challenger=0.4, n_test=N, base=0.0), POLICY).promote


def test_the_default_gate_is_parity_and_refuses_below_it_or_on_few_calls():
    policy = PromotionPolicy()
    assert (policy.parity, policy.min_test_calls) == (0.9, 20)
    # A crafted evaluation: 85 % agreement with the LLM on 100 calls is below parity; 100 % on 19 calls is too few.
    below = decide_promotion(GateScores(llm=1.0, challenger=0.85, n_test=100, base=0.1), policy)
    few = decide_promotion(GateScores(llm=1.0, challenger=1.0, n_test=19, base=0.1), policy)
    at_parity = decide_promotion(GateScores(llm=1.0, challenger=0.9, n_test=20, base=0.1), policy)
    assert not below.promote and below.checks == {"enough_test_calls": True, "parity": False, "beats_base": True}
    assert not few.promote and few.checks == {"enough_test_calls": False, "parity": True, "beats_base": True}
    assert at_parity.promote


@pytest.mark.parametrize("retired", ["floor_vs_llm", "primary_metric_floor_vs_llm"])
def test_a_retired_gate_key_fails_naming_the_new_one(retired):
    with pytest.raises(ValueError, match=f"'{retired}' -> 'parity'"):
        PromotionPolicy.model_validate({retired: 0.3})


def test_register_promote_and_roll_back_move_the_aliases(tmp_path, monkeypatch):
    from tasks.helpers.registry import champion_history, champion_version, promote, rollback

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


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    source = tmp_path / "model"
    source.mkdir()
    return f"atomic-{uuid.uuid4().hex[:6]}", source.as_uri()


def fail_once(monkeypatch, method: str) -> None:
    """The MLflow server goes away at the first call of `MlflowClient.<method>`, and is back for the next."""
    original, calls = getattr(mlflow.MlflowClient, method), []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("API request failed: connection refused")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, method, flaky)


def test_registration_is_all_or_nothing_when_the_alias_cannot_be_set(registry, monkeypatch):
    from tasks.helpers.registry import register_challenger

    name, uri = registry
    fail_once(monkeypatch, "delete_model_version")  # the clean-up itself outlasts one failure
    monkeypatch.setattr(
        mlflow.MlflowClient,
        "set_registered_model_alias",
        lambda *a: (_ for _ in ()).throw(mlflow.exceptions.MlflowException("API request failed: connection refused")),
    )
    with pytest.raises(mlflow.exceptions.MlflowException):
        register_challenger(uri, name, {"cluster_label": "x"}, undo_timeout_s=10)
    assert mlflow.MlflowClient().search_model_versions(f"name='{name}'") == []


def test_a_failed_promotion_deletes_the_version_and_keeps_the_old_champion(registry, monkeypatch):
    from tasks.helpers.registry import champion_history, champion_version, register_challenger

    name, uri = registry
    first = register_challenger(uri, name, {}, promote_reason="first")
    fail_once(monkeypatch, "set_model_version_tag")  # the last call of promote()
    with pytest.raises(mlflow.exceptions.MlflowException):
        register_challenger(uri, name, {}, promote_reason="better", undo_timeout_s=10)
    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == [first]
    assert champion_version(name) == first and champion_history(name) == [first]
    second = register_challenger(uri, name, {}, promote_reason="better")  # and the next attempt goes through
    assert champion_version(name) == second and champion_history(name) == [first, second]
