"""MLflow traces as an S1 source, against a real local store filled by `mlflow.openai.autolog()` driving the
official `openai` client against a fake OpenAI-compatible server; and the S1 task end to end on that work dir
(encrypted records, no raw PII in any file it writes, counts in the MLflow run, a re-run adding nothing)."""

from __future__ import annotations

import json

import mlflow
import openai
import pytest

from components.collect.ingest import CollectConfig, collect_sources
from components.collect.sources import SourceError, parse_source
from components.core.schema import read_records
from tasks.collect import collect_task, fetch_mlflow_traces
from tasks.helpers.tracking import TrackingConfig
from tests.support.fake_openai import fake_openai_app, serve_in_thread

CFG = CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}})
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
EMAIL = "jane.roe@example.org"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A work dir whose mlflow.db holds the traces of three autologged calls in experiment 'weather-agent'."""
    workdir = tmp_path_factory.mktemp("traced")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # The agent's traces (the source, raw by nature) live apart from the S1 runs' artifacts, not in ./mlruns.
    mlflow.create_experiment("weather-agent", artifact_location=(workdir / "agent-traces").as_uri())
    mlflow.set_experiment("weather-agent")
    mlflow.openai.autolog()
    try:
        with serve_in_thread(fake_openai_app()) as url:
            llm = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)

            @mlflow.trace(name="trip-planner")
            def planner(city: str) -> str:
                answer = llm.chat.completions.create(
                    model="gpt-4o",
                    tools=[WEATHER_TOOL],
                    messages=[
                        {"role": "system", "content": "You plan trips."},
                        {"role": "user", "content": f"Weather in {city}?"},
                    ],
                )
                return answer.choices[0].message.tool_calls[0].function.arguments

            planner("Lisbon")
            stream = llm.chat.completions.create(
                model="gpt-4o",
                stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": f"Email {EMAIL} now"}],
            )
            for _ in stream:
                pass
        mlflow.flush_trace_async_logging()
    finally:
        mlflow.openai.autolog(disable=True)
    return workdir, uri


def test_chat_spans_become_records_and_a_rerun_adds_none(traced):
    workdir, uri = traced
    source = parse_source(f"mlflow:{uri}#weather-agent", workdir)
    first = collect_sources([source], CFG, trace_fetcher=fetch_mlflow_traces)
    assert first.quarantine == []
    lisbon, email = sorted(first.records, key=lambda r: r.timestamp)
    assert lisbon.source == "mlflow_trace" and lisbon.record_id.startswith("tr-")
    assert lisbon.agent == "trip-planner" and lisbon.model == "gpt-4o"  # the span wrapping the call names the agent
    assert [m.role for m in lisbon.messages] == ["system", "user"] and lisbon.user_request == "Weather in Lisbon?"
    assert lisbon.tools == [WEATHER_TOOL]
    assert lisbon.response.tool_calls[0].parsed_arguments() == {"city": "Lisbon"}
    assert (lisbon.prompt_tokens, lisbon.completion_tokens) == (100, 20)
    assert lisbon.cost_usd == pytest.approx((100 * 2.5 + 20 * 10.0) / 1e6)
    assert lisbon.latency_ms > 0 and lisbon.timestamp.tzinfo is not None
    assert email.agent == "weather-agent"  # a bare autologged call: the experiment is the workload
    assert email.response.content == f"You said: Email {EMAIL} now" and email.output_kind == "text"

    second = collect_sources([source], CFG, first.records, first.state, trace_fetcher=fetch_mlflow_traces)
    assert second.new_records == 0 and second.duplicates_skipped == 0 and len(second.records) == 2


def test_time_window_and_unreadable_stores(traced, tmp_path):
    workdir, uri = traced
    before = parse_source(f"mlflow:{uri}#weather-agent?until=2000-01-01T00:00:00Z", workdir)
    assert collect_sources([before], CFG, trace_fetcher=fetch_mlflow_traces).records == []
    for spec, message in [
        (f"mlflow:{uri}#no-such-experiment", "not found"),
        (f"mlflow:sqlite:///{tmp_path}/missing.db#weather-agent", "no MLflow store"),
    ]:
        with pytest.raises(SourceError, match=message):
            collect_sources([parse_source(spec, workdir)], CFG, trace_fetcher=fetch_mlflow_traces)
    assert not (tmp_path / "missing.db").exists()


def test_collect_task_encrypts_leaks_nothing_and_logs_counts(traced):
    workdir, uri = traced
    log = workdir / "calls.jsonl"
    good = {
        "id": "j-1",
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"I am {EMAIL}"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": f"Noted, {EMAIL}"}}]},
    }
    log.write_bytes(
        json.dumps(good).encode()
        + b"\n"
        + f'{{"messages": "{EMAIL}"\n'.encode()
        + f'{{"request": {{"messages": [{{"role": "user", "content": "{EMAIL}"}}]}}}}\n'.encode()
    )
    cfg = CollectConfig(
        sources=[str(log), f"mlflow:{uri}#weather-agent"], prices_per_1m_tokens=CFG.prices_per_1m_tokens
    )
    summary = collect_task.fn(cfg, workdir, TrackingConfig(experiment="s1-test"))
    assert (summary["records"], summary["new_records"], summary["quarantined"]) == (3, 3, 2)

    written = [workdir / cfg.output, workdir / cfg.state, workdir / cfg.quarantine, workdir / cfg.summary]
    for path in written:
        assert EMAIL.encode() not in path.read_bytes(), path
    assert (workdir / cfg.output).read_bytes().startswith(b"gAAAAA")
    assert {r.record_id for r in read_records(workdir / cfg.output)} >= {"j-1"}

    again = collect_task.fn(cfg, workdir, TrackingConfig(experiment="s1-test"))
    assert (again["records"], again["new_records"], again["quarantined"]) == (3, 0, 0)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("s1-test").experiment_id], order_by=["attributes.start_time ASC"]
    )
    assert [(r.data.metrics["new_records"], r.data.metrics["quarantined"]) for r in runs] == [(3.0, 2.0), (0.0, 0.0)]
    artifacts = [path for path in (workdir / "mlartifacts").rglob("*") if path.is_file()]
    assert any(path.name == "collect.json" for path in artifacts)
    for path in artifacts:
        assert EMAIL.encode() not in path.read_bytes(), path


def test_full_refresh_reads_everything_again(traced):
    workdir, uri = traced
    cfg = CollectConfig(
        sources=[f"mlflow:{uri}#weather-agent"], output="data/refresh/records.parquet", state="data/refresh/state.json"
    )
    collect_task.fn(cfg, workdir, TrackingConfig(experiment="s1-test"))
    state_path, output = workdir / cfg.state, workdir / cfg.output
    first_state, first_ids = json.loads(state_path.read_text()), sorted(r.record_id for r in read_records(output))
    # A stale state (as if nothing had been read): the refresh must replace it with where its own read ended.
    state_path.write_text(json.dumps({**first_state, "sources": {}}))
    refreshed = collect_task.fn(cfg, workdir, TrackingConfig(experiment="s1-test"), full_refresh=True)
    assert (refreshed["records"], refreshed["new_records"]) == (2, 2)
    # Read from scratch: the same records (not appended twice) and the state rebuilt to where the first run ended.
    assert sorted(r.record_id for r in read_records(output)) == first_ids and len(first_ids) == 2
    assert json.loads(state_path.read_text()) == first_state
    after = collect_task.fn(cfg, workdir, TrackingConfig(experiment="s1-test"))
    assert (after["records"], after["new_records"]) == (2, 0)


def test_cli_reports_a_wrong_store_key_in_one_line(traced, tmp_path, monkeypatch):
    from cryptography.fernet import Fernet
    from typer.testing import CliRunner

    from components.core.secure_store import EncryptedAppendLog
    from flows.cli import app

    workdir, _ = traced
    EncryptedAppendLog(tmp_path / "store", key=Fernet.generate_key()).append("calls-20261124.jsonl", b"{}")
    monkeypatch.setenv("LLM2SLM_STORE_KEY", Fernet.generate_key().decode())
    result = CliRunner().invoke(
        app, ["collect", "--source", f"proxy-store:{tmp_path / 'store'}", "--workdir", str(workdir / "wrong-key")]
    )
    assert result.exit_code == 2
    assert "wrong store key" in result.output and "Traceback" not in result.output
