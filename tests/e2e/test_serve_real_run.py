"""What a user does after `llm2slm run`, on the work dir the session's real run made (tests/e2e/conftest.py,
the catalog's default SmolLM2 and its LoRA adapter): `serve-slm` answering the official `openai` client with tool
calls, `export` in each format, and `proxy --route` answering a held-out call with the cluster's SLM. router.yaml
names the base by its catalog name, which every one of them must load offline (components/slm/catalog.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
import yaml
from typer.testing import CliRunner

from components.core.config import load_params, resolve
from components.core.schema import read_records, split_records
from components.serve.export_templates import request_messages
from components.serve.proxy import PROXY_KEYS_ENV
from components.serve.router import check_tool_calls
from components.slm import parse_completion
from components.slm.catalog import load_catalog
from tests.support.fake_openai import fake_openai_app, serve_in_thread

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-serving"
DEFAULT_MODEL = load_catalog().models[0].name  # what S4 benchmarks by default: SmolLM2-135M-Instruct


def cli_app():
    from flows.cli import app

    return app


@pytest.fixture(scope="module")
def served(conversion):
    """The run's first cluster routed to an SLM, and one of its held-out calls as the OpenAI request an agent sends."""
    workdir = conversion["workdir"]
    router = yaml.safe_load((workdir / "reports/router.yaml").read_text())
    cluster_id, cluster = next((int(c), v) for c, v in router["clusters"].items() if v["mode"] != "off")
    evaluate = load_params(conversion["params"])["evaluate"]
    import pandas as pd

    records = {r.record_id: r for r in read_records(Path(resolve(workdir, evaluate["curated"])))}
    splits = pd.read_parquet(resolve(workdir, evaluate["splits"]))
    held_out = split_records(records, splits, cluster_id, "test")[0]
    messages, tools = request_messages(held_out)
    return {
        "workdir": workdir,
        "params": conversion["params"],
        "cluster_id": cluster_id,
        "cluster": cluster,
        "request": {"messages": messages, "tools": tools},
    }


def assert_tool_calls_valid(message, request: dict) -> None:
    """At least one call, each naming an offered tool with arguments valid against its schema (the router's own
    guardrail)."""
    calls = "".join(
        f'<tool_call>{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}</tool_call>\n'
        for call in message.tool_calls or []
    )
    assert check_tool_calls(parse_completion(calls), request) is None, message


def test_router_yaml_names_the_catalog_default_by_its_name(served):
    # The path below only matters because of this: a catalog name, not a folder or a hub id.
    assert served["cluster"]["base_model"] == DEFAULT_MODEL
    assert Path(served["cluster"]["adapter_dir"], "adapter_config.json").exists()


def test_serve_slm_answers_the_openai_client_with_tool_calls(served, monkeypatch):
    monkeypatch.setenv(PROXY_KEYS_ENV, KEY)
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **_: started.update(app=app))
    workdir, cluster_id = served["workdir"], served["cluster_id"]
    result = CliRunner().invoke(
        cli_app(), ["serve-slm", "--workdir", str(workdir), "--params", str(served["params"])], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    with serve_in_thread(started["app"]) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        [model] = client.models.list().data
        assert model.id == f"cluster-{cluster_id}" and model.model_extra["parent"] == DEFAULT_MODEL
        answer = client.chat.completions.create(model=model.id, **served["request"])
    assert answer.choices[0].finish_reason == "tool_calls" and answer.usage.completion_tokens > 0
    assert_tool_calls_valid(answer.choices[0].message, served["request"])


@pytest.mark.parametrize("kind", ["merged", "vllm", "gguf"])
def test_export_writes_each_format_from_the_run(served, kind, tmp_path, monkeypatch):
    from components.serve.export import llama_cpp_dir

    if kind == "gguf" and llama_cpp_dir() is None:
        pytest.skip("GGUF export needs llama.cpp's convert_hf_to_gguf.py: set LLM2SLM_LLAMA_CPP_DIR")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir, cluster_id = served["workdir"], served["cluster_id"]
    out = tmp_path / kind
    command = ["export", "--cluster", str(cluster_id), "--format", kind, "--workdir", str(workdir)]
    result = CliRunner().invoke(
        cli_app(), [*command, "--params", str(served["params"]), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    # No champion (the 3-step adapter is below parity): router.yaml's adapter, said so.
    assert "no champion registered" in result.output
    if kind == "vllm":
        from components.slm import prepare_model

        bundle = json.loads((out / "bundle.json").read_text())
        # The base vLLM loads is the catalog model's prepared folder, and serve.sh names it.
        assert bundle["base_model"] == DEFAULT_MODEL and bundle["base_folder"] == prepare_model(DEFAULT_MODEL)
        assert Path(bundle["base_folder"], "config.json").exists()
        assert bundle["base_folder"] in (out / "serve.sh").read_text()
        assert (out / "adapter" / "adapter_config.json").exists() and bundle["tools"]
        return
    merged = out if kind == "merged" else out / "merged"
    manifest = json.loads((merged / "llm2slm_export.json").read_text())
    assert manifest["base_model"] == DEFAULT_MODEL and manifest["tools"]
    if kind == "gguf":
        from gguf import GGUFReader

        stored = GGUFReader(out / "model.gguf").fields["tokenizer.chat_template"]
        assert bytes(stored.parts[stored.data[0]]).decode() == (merged / "chat_template.jinja").read_text()
        return
    import torch
    from transformers import AutoModelForCausalLM

    from components import slm

    # The merged folder is base + adapter: the same logits as the catalog model with the run's adapter on top.
    exported = AutoModelForCausalLM.from_pretrained(merged)
    tuned, tokenizer = slm.load_model(DEFAULT_MODEL, served["cluster"]["adapter_dir"])
    ids = tokenizer("Book the cheapest flight to Oslo.", return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(exported(**ids).logits, tuned(**ids).logits, atol=1e-4)


def test_proxy_route_answers_a_held_out_call_with_the_clusters_slm(served, tmp_path, monkeypatch):
    from components.collect.ingest import CollectConfig, collect_sources
    from components.collect.sources import parse_source

    cluster_id = served["cluster_id"]
    # The run's router.yaml with the cluster switched on (the gate left it in shadow after 3 training steps).
    router = yaml.safe_load((served["workdir"] / "reports/router.yaml").read_text())
    router["clusters"][cluster_id]["mode"] = "on"
    # no audit stream here (S6 writes one: the first calls a day also go to the LLM; tests/unit/serve test it)
    router |= {"audit_share": 0.0, "audit_min_per_day": 0}
    route = tmp_path / "router.yaml"
    route.write_text(yaml.safe_dump(router))
    monkeypatch.setenv(PROXY_KEYS_ENV, KEY)
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **_: started.update(app=app))
    store = tmp_path / "store"
    upstream = fake_openai_app()
    with serve_in_thread(upstream) as upstream_url:
        command = ["proxy", "--upstream-url", f"{upstream_url}/v1", "--store", str(store), "--route", str(route)]
        result = CliRunner().invoke(cli_app(), [*command, "--params", str(served["params"])], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        with serve_in_thread(started["app"]) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            answer = client.chat.completions.create(model="gpt-4o", **served["request"])
            deadline = time.monotonic() + 30
            while started["app"].state.stats["recorded"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    [stored] = collect_sources([parse_source(f"proxy-store:{store}", Path("/"))], CollectConfig()).records
    routed = stored.metadata["route"]
    assert routed["cluster_id"] == cluster_id, routed
    assert (routed["route"], answer.model) == ("slm", f"slm-cluster-{cluster_id}"), routed
    assert upstream.state.requests == []  # the LLM was not asked
    assert_tool_calls_valid(answer.choices[0].message, served["request"])


def test_a_selective_cluster_is_answered_by_its_slm_only_when_it_is_sure(served, tmp_path, monkeypatch):
    """The run's cluster made ``selective`` (a calibrator on the answer's mean log-probability): serve-slm reports
    each held-out call's calibrated confidence to the `openai` client, and a threshold between the most and the
    least sure answers makes ``proxy --route`` send the first with the SLM and defer the second to the LLM."""
    import pandas as pd

    from components.collect.ingest import CollectConfig, collect_sources
    from components.collect.sources import parse_source
    from components.slm.confidence import FEATURES, Calibrator

    workdir, cluster_id = served["workdir"], served["cluster_id"]
    evaluate = load_params(served["params"])["evaluate"]
    records = {r.record_id: r for r in read_records(Path(resolve(workdir, evaluate["curated"])))}
    held_out = split_records(records, pd.read_parquet(resolve(workdir, evaluate["splits"])), cluster_id, "test")
    requests = [dict(zip(("messages", "tools"), request_messages(record), strict=True)) for record in held_out]
    gate = tmp_path / f"cluster_{cluster_id}.json"
    gate.write_text(json.dumps({**Calibrator(FEATURES, (1.0, 0.0, 0.0, 0.0), 0.0).to_dict(), "threshold": None}))

    def write_router(threshold: float) -> Path:
        router = yaml.safe_load((workdir / "reports/router.yaml").read_text())
        router["clusters"][cluster_id].update(mode="selective", calibrator=str(gate), threshold=threshold)
        router |= {"audit_share": 0.0, "audit_min_per_day": 0}  # only deferrals reach the LLM: no audit stream
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(router))
        return path

    monkeypatch.setenv(PROXY_KEYS_ENV, KEY)
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **_: started.update(app=app))
    command = ["serve-slm", "--workdir", str(workdir), "--params", str(served["params"]), "--poll-s", "0"]
    result = CliRunner().invoke(
        cli_app(), [*command, "--router-config", str(write_router(0.0))], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    with serve_in_thread(started["app"]) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        answers = [client.chat.completions.create(model=f"cluster-{cluster_id}", **r) for r in requests]
    notes = [answer.model_extra["llm2slm"] for answer in answers]
    assert all(n["calibrated"] and n["threshold"] == 0.0 and n["decision"] == "accept" for n in notes), notes
    confidence = [n["confidence"] for n in notes]
    sure, unsure = confidence.index(max(confidence)), confidence.index(min(confidence))
    assert confidence[sure] > confidence[unsure], confidence  # the held-out answers differ in how sure they are
    threshold = (confidence[sure] + confidence[unsure]) / 2

    store = tmp_path / "store"
    upstream = fake_openai_app()
    started.clear()
    with serve_in_thread(upstream) as upstream_url:
        command = ["proxy", "--upstream-url", f"{upstream_url}/v1", "--store", str(store)]
        command += ["--route", str(write_router(threshold)), "--params", str(served["params"])]
        result = CliRunner().invoke(cli_app(), command, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        with serve_in_thread(started["app"]) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            routed = [client.chat.completions.create(model="gpt-4o", **requests[i]) for i in (sure, unsure)]
            deadline = time.monotonic() + 30
            while started["app"].state.stats["recorded"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert [answer.model for answer in routed] == [f"slm-cluster-{cluster_id}", "gpt-4o"]
    assert len(upstream.state.requests) == 1  # only the deferred call reached the LLM
    stored = collect_sources([parse_source(f"proxy-store:{store}", Path("/"))], CollectConfig()).records
    routes = sorted((record.metadata["route"] for record in stored), key=lambda r: r["decision"])
    assert [(r["route"], r["decision"], r["cluster_id"]) for r in routes] == [
        ("slm", "accept", cluster_id),
        ("llm", "defer", cluster_id),
    ]
    # The router scored each answer as serve-slm did: same engine path, same calibrator.
    assert [r["confidence"] for r in routes] == pytest.approx([confidence[sure], confidence[unsure]], abs=1e-4)
    assert all(r["threshold"] == pytest.approx(threshold) and r["latency_ms"] > 0 for r in routes)
    assert_tool_calls_valid(routed[0].choices[0].message, requests[sure])
