"""What a flow run publishes to Prefect's UI: the conversion's headline and per-cluster table, or a refresh's
decisions, as a Markdown artifact of the flow run that links its MLflow parent run; read back through the API."""

import uuid

import pytest
from prefect import flow

from tasks.helpers.flow_artifacts import CONVERSION_KEY, REFRESH_KEY, publish_conversion, publish_refresh
from tasks.helpers.tracking import TrackingConfig, end_parent_run, start_parent_run

EVALUATION = {
    "summary": {
        "headline": "25% of the agent's calls (30 of 120) are served by an SLM at the LLM's quality.",
        "calls_total": 120,
        "calls_at_parity": 30,
        "share_at_parity": 0.25,
        "share_at_parity_selective": 0.05,
        "llm_cost_per_1k_calls": 8.87,
        "blended_cost_per_1k_calls": 6.66,
        "savings_share": 0.25,
        "not_converted": [{"cluster_id": 4, "reason": "time budget"}],
    },
    "clusters": [
        {
            "cluster_id": 1,
            "label": "trading (get_stock_info)",
            "primary_metric": "full_call_match",
            "scores": {
                "llm": {"full_call_match": 1.0},
                "slm_base": {"full_call_match": 0.18},
                "slm_finetuned": {"full_call_match": 0.95},
            },
            "primary_metric_ci95": {"llm": None, "slm_base": [0.07, 0.39], "slm_finetuned": [0.77, 0.99]},
            "cost_per_1k_calls": {"llm": 8.87, "slm_base": 0.05, "slm_finetuned": 0.05},
            "promoted": True,
        }
    ],
}
REFRESH = {
    "refresh": 2,
    "batch_records": 28,
    "drift": {"not_measurable": "no reference mix yet (first refresh)"},
    "retrained": {"1": "grew by 12 calls"},
    "clusters": [
        {
            "cluster_id": 1,
            "label": "get_weather",
            "primary_metric": "full_call_match",
            "n_test": 4,
            "promoted": False,
            "reason": "beats_champion failed",
            "systems": {
                "llm": {"score": 1.0, "cost_per_1k_calls": 8.0, "version": None},
                "slm_base": None,
                "champion": {"score": 0.75, "cost_per_1k_calls": 0.05, "version": "1"},
                "challenger": {"score": 0.5, "cost_per_1k_calls": 0.05, "version": "2"},
            },
        }
    ],
}


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def flow_run_artifacts(flow_run_id) -> list[dict]:
    """The flow run's artifacts through the REST API (Prefect 3.8.8's client sends nulls its server answers 422 to)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "CREATED_DESC", "limit": 10}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_a_conversion_and_a_refresh_publish_their_figures_and_mlflow_run_on_the_flow_run(
    harness, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingConfig(experiment=f"artifacts-{uuid.uuid4().hex[:8]}")

    @flow(name="publishes")
    def publishes(kind: str) -> tuple[str, str]:
        from prefect.runtime import flow_run

        parent = start_parent_run(tmp_path, tracking, kind, {})
        end_parent_run(parent)
        if kind == "conversion":
            publish_conversion(EVALUATION, parent)
        else:
            publish_refresh(REFRESH, parent)
        return flow_run.id, parent

    flow_run_id, parent = publishes("conversion")
    [artifact] = flow_run_artifacts(flow_run_id)
    assert artifact["key"] == CONVERSION_KEY and artifact["type"] == "markdown"
    text = artifact["data"]
    assert EVALUATION["summary"]["headline"] in text and artifact["description"] == EVALUATION["summary"]["headline"]
    assert "| 30 of 120 | 25.0% | 5.0% | $6.66 | $8.87 | 25% |" in text
    [row] = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert "trading (get_stock_info)" in row and "0.950" in row and row.endswith("| yes |")
    assert "cluster 4 not converted: time budget" in text
    assert f"`{parent}`" in text and f"sqlite:///{tmp_path.resolve()}/mlflow.db" in text

    flow_run_id, parent = publishes("refresh")
    [artifact] = flow_run_artifacts(flow_run_id)
    assert artifact["key"] == REFRESH_KEY and "# llm2slm refresh 2" in artifact["data"]
    assert "28 new calls; 1 cluster(s) retrained, 0 challenger(s) promoted" in artifact["data"]
    assert (
        "cluster-mix PSI not measurable" in artifact["data"]
        and "- cluster 1 retrained: grew by 12 calls" in artifact["data"]
    )
    [row] = [line for line in artifact["data"].splitlines() if line.startswith("| 1 |")]
    assert "| 0.750 (v1) | 0.500 (v2) |" in row and "| no | beats_champion failed |" in row
    assert parent in artifact["data"]


def test_a_tracking_server_gets_a_link_to_the_run_page():
    from components.evaluate.flow_summary import RunLink, run_url

    url = run_url("http://127.0.0.1:5000/", "3", "abc")
    assert url == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert RunLink("abc", "http://127.0.0.1:5000", url).markdown() == f"MLflow run: [abc]({url})"
    assert run_url("sqlite:///tmp/mlflow.db", "3", "abc") is None
