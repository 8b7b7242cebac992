"""End to end: `llm2slm run` on a small slice of the demo data, with the real SmolLM2 and a few LoRA steps,
under Prefect's test harness (the session's `conversion`, tests/e2e/conftest.py). Checks the quarantine, the MLflow
runs, the registered version, the report."""

import html
import json
from pathlib import Path

import pytest
import yaml

from components.core.config import load_params
from tests.support.leak_scan import demo_injected_values, scan_tree

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_quarantine_holds_every_malformed_line(conversion):
    entries = [json.loads(line) for line in (conversion["workdir"] / "data/quarantine.jsonl").read_text().splitlines()]
    tails = [entry for entry in entries if "stops after a tool message" in entry["reason"]]
    assert len(entries) - len(tails) == conversion["malformed"] and len(tails) == conversion["truncated"]
    assert all(entry["reason"] and entry["line_number"] >= 1 for entry in entries)
    assert f"quarantined lines: {len(entries)}" in conversion["output"]


def test_mlflow_has_a_parent_run_with_one_nested_run_per_step(conversion):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{conversion['workdir'] / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[conversion["experiment"]], output_format="list")
    parents = [r for r in runs if r.data.tags.get("llm2slm.step") == "conversion"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["llm2slm.step"] for r in children) == sorted(
        ["collect", "anonymize", "discover", "select", "finetune", "evaluate"]
    )
    assert (conversion["workdir"] / "mlartifacts").is_dir()


def test_registered_version_has_an_alias(conversion):
    from mlflow.tracking import MlflowClient

    evaluation = json.loads((conversion["workdir"] / "reports/evaluation.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{conversion['workdir'] / 'mlflow.db'}")
    # Every evaluated cluster is registered: an empty list would make the loop below check nothing.
    assert evaluation["clusters"], "no cluster was evaluated, so nothing was registered"
    for entry in evaluation["clusters"]:
        registered = entry["registered_model"]
        version = client.get_model_version_by_alias(registered["name"], registered["alias"])
        assert str(version.version) == registered["version"]
        assert registered["alias"] == ("champion" if entry["promoted"] else "challenger")


def test_evaluation_table_compares_llm_base_and_finetuned(conversion):
    evaluation = json.loads((conversion["workdir"] / "reports/evaluation.json").read_text())
    assert evaluation["clusters"], "no cluster was evaluated"
    for entry in evaluation["clusters"]:
        assert entry["n_train"] > 0 and entry["n_test"] > 0
        assert set(entry["scores"]) == {"llm", "slm_base", "slm_finetuned"}
        for scores in entry["scores"].values():
            assert 0.0 <= scores[entry["primary_metric"]] <= 1.0
        if entry["output_kind"] == "tool_call":
            assert {"function_name_accuracy", "full_call_match"} <= set(entry["scores"]["slm_finetuned"])
        assert set(entry["cost_per_1k_calls"]) == {"llm", "slm_base", "slm_finetuned"}
        assert entry["cost_per_1k_calls"]["llm"] > 0
        assert set(entry["latency_ms_p50"]) == {"slm_base", "slm_finetuned"}
        assert isinstance(entry["promoted"], bool)
    report = (conversion["workdir"] / "reports/report.html").read_text()
    assert all(entry["label"] in report for entry in evaluation["clusters"])
    assert "Report:" in conversion["output"]


def test_the_summary_is_the_headline_and_the_router_config_follows_the_gate(conversion):
    from components.core.schema import read_records

    workdir = conversion["workdir"]
    evaluation = json.loads((workdir / "reports/evaluation.json").read_text())
    summary = evaluation["summary"]
    # Every collected call counts (the quarantined lines are not calls), outliers included.
    assert summary["calls_total"] == len(read_records(workdir / "data/collected/records.parquet"))
    promoted = sorted(e["cluster_id"] for e in evaluation["clusters"] if e["promoted"])
    assert summary["clusters_at_parity"] == promoted
    assert summary["clusters_evaluated"] == sorted(e["cluster_id"] for e in evaluation["clusters"])
    assert 0 <= summary["calls_at_parity"] <= summary["calls_in_converted_clusters"] <= summary["calls_total"]
    if not promoted and not summary["clusters_selective"]:  # nothing at parity: every call stays with the LLM
        assert summary["blended_cost_per_1k_calls"] == summary["llm_cost_per_1k_calls"] > 0
    # The gate: never promoted below parity or on fewer than min_test_calls held-out calls.
    gate = load_params(ROOT / "params.yaml")["promotion"]
    for entry in evaluation["clusters"]:
        tuned = entry["scores"]["slm_finetuned"][entry["primary_metric"]]
        llm = entry["scores"]["llm"][entry["primary_metric"]]
        assert entry["promoted"] == (
            entry["n_test"] >= gate["min_test_calls"]
            and tuned >= gate["parity"] * llm
            and tuned > entry["scores"]["slm_base"][entry["primary_metric"]]
        )
    router = yaml.safe_load((workdir / "reports/router.yaml").read_text())
    # the router places requests with S3's own cluster model
    assert Path(router["cluster_model_dir"]) == workdir / "data/clusters/model"
    assert {int(c): v["mode"] for c, v in router["clusters"].items()} == {
        e["cluster_id"]: "on" if e["promoted"] else "selective" if e["mode"] == "selective" else "shadow"
        for e in evaluation["clusters"]
    }
    # A selective cluster (the SLM answers the calls it is sure of) passed the gate on out-of-fold figures.
    for entry in evaluation["clusters"]:
        if entry["mode"] == "selective":
            figures = entry["selective"]
            assert figures["accepted_calls"] >= gate["min_test_calls"]
            assert figures["coverage"] >= gate["min_coverage"]
            assert figures["accepted_accuracy"] >= gate["parity"] * entry["scores"]["llm"][entry["primary_metric"]]
    # printed last by the CLI (after the paths; library log lines may interleave), and the report opens with it
    lines = conversion["output"].splitlines()
    mlflow_line = next(i for i, line in enumerate(lines) if line.startswith("MLflow UI:"))
    assert summary["headline"] in lines[mlflow_line + 1 :]
    report = (workdir / "reports/report.html").read_text()
    assert report.index(html.escape(summary["headline"].split(";")[0])) < report.index("<h2>Cluster")
    # The SLM costs say what they assume: S6's engine, the machine it ran on, the hardware billed (select's).
    select = load_params(ROOT / "params.yaml")["select"]
    basis = summary["slm_cost_basis"]
    assert (basis["engine"], basis["hardware"]) == ("onnxruntime-genai", select["serving_hardware"])
    assert basis["hourly_cost_usd"] == select["hardware_prices_usd_per_hour"][select["serving_hardware"]]
    assert "SLM cost: onnxruntime-genai, measured on" in report


def test_no_injected_pii_in_any_file_after_s6(conversion):
    """Every entity type the demo injects (names, emails, phones, SSNs, cards), in every file the run wrote: the
    work dir (data, reports, mlflow.db, mlartifacts, adapters), Prefect's home and its database. S1's records are
    encrypted at rest, so they are scanned too and must not show a raw value either."""
    injected = demo_injected_values(conversion["lines"])
    assert all(injected[kind] for kind in ("name", "email", "phone", "ssn", "card")), injected
    roots = [conversion["workdir"], conversion["prefect_home"], conversion["prefect_db"]]
    assert (conversion["workdir"] / "mlflow.db").is_file() and (
        conversion["workdir"] / "reports/evaluation.json"
    ).is_file()
    assert any(conversion["prefect_db"].iterdir()), "the Prefect database was not copied: it would go unscanned"
    leaks = scan_tree(roots, set().union(*injected.values()))
    assert not leaks, "raw values found in: " + ", ".join(f"{where} ({len(found)})" for where, found in leaks.items())
