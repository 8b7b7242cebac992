"""The S6 router behind the logging proxy over real HTTP: the official `openai` client, a fake upstream LLM on
127.0.0.1, a cluster model fitted on bag-of-words embeddings, and SLM stand-ins (one test runs a real tiny model
through the default generation path). The routes are read back from the encrypted store via collect."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import openai
import pytest

from components.collect.ingest import CollectConfig, collect_sources
from components.collect.sources import parse_source
from components.core.schema import CallRecord, ChatMessage
from components.discover.embeddings import TextSettings, embed_tasks
from components.discover.identity import AssignSettings, build_model
from components.serve.proxy import create_app
from components.serve.router import _in_canary
from components.serve.service import RouterConfig, RouterResponder, call_key, load_router_config
from tests.support.fake_openai import fake_openai_app, serve_in_thread
from tests.support.tiny_models import WEATHER_TOOL, weather_record

CLIENT_KEY = "sk-router-test"
CFG = CollectConfig(prices_per_1m_tokens={"gpt-4o": {"input": 2.5, "output": 10.0}})
WEATHER, SKI, TRIPS = 0, 1, 2
# Per cluster: the system prompt and the request template; the last word of a request is the place, which the
# fake upstream puts in its get_weather call.
TASKS = {
    WEATHER: ("You help travellers with the weather forecast.", "What is the weather in {}?"),
    SKI: ("You are a ski resort assistant reporting snow depth.", "How much fresh snow on the slopes of {}?"),
    TRIPS: ("You plan holiday trips and book hotels.", "Plan a relaxing week of holidays in {}"),
}
PLACES = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Perth", "Rome", "Zermatt"]
OTHER_TOOL = {"type": "function", "function": {"name": "book_flight", "parameters": {"type": "object"}}}


def bag_of_words(texts: list[str], model_ref: str) -> np.ndarray:
    """A deterministic stand-in for the sentence model: hashed word counts, unit length."""
    vectors = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            vectors[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 256] += 1.0
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def body(cluster: int, place: str, **extra) -> dict:
    system, request = TASKS[cluster]
    return {
        "model": "gpt-4o",
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": request.format(place)}],
        **extra,
    }


# Placement by system prompt and request only, so that a call offering one more tool stays in its cluster.
TEXT = TextSettings(weights={"system": 0.3, "tools": 0.0, "request": 1.0})


def cluster_model():
    records = [
        CallRecord(
            record_id=f"{cluster}-{place}",
            tools=[WEATHER_TOOL],
            response=ChatMessage(role="assistant"),
            messages=body(cluster, place)["messages"],
        )
        for cluster in TASKS
        for place in PLACES
    ]
    unit, _ = embed_tasks(records, "bag-of-words", TEXT, None, bag_of_words)
    labels = np.array([cluster for cluster in TASKS for _ in PLACES])
    # coverage 1.0: a call is placed when it is as close as the cluster's least central member.
    return build_model(unit, labels, [r.record_id for r in records], "bag-of-words", TEXT, AssignSettings(coverage=1.0))


def stand_in_answer(record: CallRecord) -> str:
    """Calls get_weather for the request's place, as the fake upstream does; 'Oslo' gets an invalid call and a
    shadow call for 'Zermatt' names another place (a disagreement)."""
    place = record.user_request.rstrip("?.! ").split()[-1]
    if place == "Oslo":
        return '<tool_call>{"name": "get_weather", "arguments": {"town": 3}}</tool_call>'
    if place == "Zermatt":
        place = "Davos"
    return f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{place}"}}}}</tool_call>'


def slm_stand_in(cluster_id: int, records: list[CallRecord]) -> list[str]:
    return [stand_in_answer(record) for record in records]


def router_config(**overrides) -> RouterConfig:
    serving = {"base_model": "unused", "known_tools": ["get_weather"]}
    return RouterConfig.model_validate(
        {
            "clusters": {
                WEATHER: {**serving, "mode": "on"},
                SKI: {**serving, "mode": "shadow"},
                TRIPS: {**serving, "mode": "canary", "canary_share": 0.5},
            },
            **overrides,
        }
    )


class Proxy:
    """The proxy with a router in front of a fake upstream, served on 127.0.0.1."""

    def __init__(self, store: Path, responder: RouterResponder, backend: str = "embedded (transformers-eager)") -> None:
        # backend: how the router must name where its SLM answers came from (recorded with each SLM route)
        self.store, self.responder, self.backend = store, responder, backend

    def __enter__(self) -> Proxy:
        self.upstream = fake_openai_app()
        self._upstream_ctx = serve_in_thread(self.upstream)
        upstream_url = self._upstream_ctx.__enter__()
        self.app = create_app(f"{upstream_url}/v1", self.store, CFG, [CLIENT_KEY], responders=[self.responder])
        self._proxy_ctx = serve_in_thread(self.app)
        self.client = openai.OpenAI(base_url=f"{self._proxy_ctx.__enter__()}/v1", api_key=CLIENT_KEY, max_retries=0)
        return self

    def __exit__(self, *exc) -> None:
        self._proxy_ctx.__exit__(*exc)
        self._upstream_ctx.__exit__(*exc)
        self.responder.close()

    def ask(self, request: dict):
        return self.client.chat.completions.create(**request)

    def records(self, count: int) -> dict[str, CallRecord]:
        """The stored calls by user request, once ``count`` were written."""
        deadline = time.monotonic() + 20
        while self.app.state.stats["recorded"] < count and time.monotonic() < deadline:
            time.sleep(0.02)
        result = collect_sources([parse_source(f"proxy-store:{self.store}", Path("/"))], CFG)
        return {record.user_request: record for record in result.records}


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    responder = RouterResponder(router_config(), cluster_model(), embed=bag_of_words, generator=slm_stand_in)
    with Proxy(tmp_path_factory.mktemp("router-store"), responder) as proxy:
        yield proxy


def only_call(answer) -> tuple[str, dict]:
    [call] = answer.choices[0].message.tool_calls
    return call.function.name, json.loads(call.function.arguments)


def test_on_mode_answers_with_the_slm_and_falls_back_on_an_invalid_tool_call(routed):
    before = len(routed.upstream.state.requests)
    paris = routed.ask(body(WEATHER, "Paris"))
    assert paris.model == f"slm-cluster-{WEATHER}" and only_call(paris) == ("get_weather", {"city": "Paris"})
    assert len(routed.upstream.state.requests) == before  # the LLM was not asked

    oslo = routed.ask(body(WEATHER, "Oslo"))  # the SLM's call lacks the required 'city': the LLM answers
    assert oslo.model == "gpt-4o" and only_call(oslo) == ("get_weather", {"city": "Oslo"})
    assert len(routed.upstream.state.requests) == before + 1
    unknown = routed.ask(body(WEATHER, "Lima", tools=[WEATHER_TOOL, OTHER_TOOL]))
    assert unknown.model == "gpt-4o"
    streamed = routed.ask(body(WEATHER, "Cairo", stream=True))
    assert json.loads(
        "".join(
            chunk.choices[0].delta.tool_calls[0].function.arguments
            for chunk in streamed
            if chunk.choices and chunk.choices[0].delta.tool_calls
        )
    ) == {"city": "Cairo"}
    outlier = routed.ask({"model": "gpt-4o", "messages": [{"role": "user", "content": "Tell me a joke about cats"}]})
    assert outlier.choices[0].message.content == "You said: Tell me a joke about cats"

    stored = routed.records(5)
    route = {text.split()[-1].rstrip("?"): record.metadata["route"] for text, record in stored.items()}
    # A call the SLM took records its backend: the route report names it beside the SLM's cost.
    slm = {"cluster_id": WEATHER, "backend": routed.backend.format(cluster=WEATHER)}
    assert route["Paris"] == {"route": "slm", "reason": "on", **slm}
    assert route["Oslo"] == {"route": "fallback", "reason": "arguments invalid at root", **slm}
    assert route["Lima"] == {"route": "llm", "cluster_id": WEATHER, "reason": "1 tool(s) unknown to the cluster"}
    assert route["Cairo"] == {"route": "llm", "cluster_id": None, "reason": "streaming request"}
    assert route["cats"] == {"route": "llm", "cluster_id": -1, "reason": "outlier"}
    # The record holds what the agent got: the SLM's answer (no usage: no LLM cost), the LLM's after a fallback.
    paris_record, oslo_record = (stored[TASKS[WEATHER][1].format(place)] for place in ("Paris", "Oslo"))
    assert paris_record.response.tool_calls[0].parsed_arguments() == {"city": "Paris"} and not paris_record.cost_usd
    assert oslo_record.response.tool_calls[0].parsed_arguments() == {"city": "Oslo"} and oslo_record.cost_usd > 0


def test_shadow_mode_answers_with_the_llm_and_records_agreement(routed):
    before = len(routed.upstream.state.requests)
    answers = [routed.ask(body(SKI, place)) for place in ("Perth", "Zermatt", "Oslo")]
    assert all(answer.model == "gpt-4o" for answer in answers)
    assert len(routed.upstream.state.requests) == before + 3
    stored = routed.records(8)
    route = {place: stored[TASKS[SKI][1].format(place)].metadata["route"] for place in ("Perth", "Zermatt", "Oslo")}
    assert route["Perth"] == {
        "route": "shadow",
        "cluster_id": SKI,
        "reason": "shadow mode",
        "agree": True,
        "backend": routed.backend.format(cluster=SKI),
    }
    assert route["Zermatt"]["agree"] is False and "slm_rejected" not in route["Zermatt"]
    assert route["Oslo"]["agree"] is False and route["Oslo"]["slm_rejected"] == "arguments invalid at root"


def test_canary_mode_sends_the_seeded_share_to_the_slm(routed):
    places = ["Paris", "Berlin", "Tokyo", "Lima", "Cairo", "Quito", "Perth", "Rome"]
    expected = {place: _in_canary(call_key(body(TRIPS, place)), 0.5, seed=0) for place in places}
    assert set(expected.values()) == {True, False}  # this seed draws both routes
    served = {place: routed.ask(body(TRIPS, place)).model for place in places}
    assert served == {place: f"slm-cluster-{TRIPS}" if slm else "gpt-4o" for place, slm in expected.items()}
    stored = routed.records(16)
    routes = {place: stored[TASKS[TRIPS][1].format(place)].metadata["route"] for place in places}
    assert routes == {
        place: {
            "route": "slm" if slm else "llm",
            "cluster_id": TRIPS,
            "reason": "canary" if slm else "outside canary share",
            **({"backend": routed.backend.format(cluster=TRIPS)} if slm else {}),
        }
        for place, slm in expected.items()
    }


def test_router_config_reads_a_route_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "route:\n  cluster_model_dir: m\n  clusters:\n    3: {mode: canary, base_model: b, canary_share: 0.2}\n"
        "    4: {mode: on, base_model: b}\n    5: {mode: off, base_model: b}\n"
    )
    config = load_router_config(path)
    assert config.cluster_model_dir == "m" and config.routes()[3].canary_share == 0.2
    assert (config.routes()[4].mode, config.routes()[5].mode) == ("on", "off")  # YAML's booleans, unquoted
    with pytest.raises(ValueError):
        RouterConfig.model_validate({"clusters": {3: {"mode": "sometimes", "base_model": "b"}}})


def test_a_real_tiny_slm_is_loaded_once_and_its_unusable_answer_falls_back(tmp_path, tiny_model_dir, monkeypatch):
    import components.slm as slm

    loads = []
    real_load = slm.load_model
    monkeypatch.setattr(slm, "load_model", lambda *args: loads.append(args) or real_load(*args))
    config = RouterConfig.model_validate(
        {
            "max_new_tokens": 4,
            "clusters": {WEATHER: {"mode": "on", "base_model": tiny_model_dir, "known_tools": ["get_weather"]}},
        }
    )
    responder = RouterResponder(config, cluster_model(), embed=bag_of_words)  # the default generator
    with Proxy(tmp_path, responder) as proxy:
        answers = [proxy.ask(body(WEATHER, place)) for place in ("Paris", "Tokyo")]
        stored = proxy.records(2)
    assert loads == [(tiny_model_dir,)] and responder.pool.loaded == {tiny_model_dir: []}
    # A random-weight model produces no valid tool call: the guardrail sends both calls to the LLM.
    assert [only_call(answer) for answer in answers] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Tokyo"}),
    ]
    assert {record.metadata["route"]["route"] for record in stored.values()} == {"fallback"}
    assert {record.metadata["route"]["reason"] for record in stored.values()} == {"no tool call parsed"}


def test_route_report_over_the_store_is_written_and_tracked(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    responder = RouterResponder(router_config(), cluster_model(), embed=bag_of_words, generator=slm_stand_in)
    with Proxy(tmp_path / "store", responder) as proxy:
        for request in (
            body(WEATHER, "Paris"),
            body(WEATHER, "Oslo"),
            body(SKI, "Perth"),
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "Tell me a joke"}]},
        ):
            proxy.ask(request)
        stored = proxy.records(4)
    result = CliRunner().invoke(
        app,
        [
            "route-report",
            "--store",
            str(tmp_path / "store"),
            "--out",
            str(tmp_path / "report"),
            "--workdir",
            str(tmp_path / "work"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "route_summary.json").read_text())
    llm_cost = (100 * 2.5 + 20 * 10.0) / 1e6  # the fake upstream's usage at the test's prices
    assert summary["llm_cost_per_call"] == pytest.approx(llm_cost)
    # The SLM's cost per call is its one answer's serving time at the configured hourly price.
    from components.core.config import load_params

    select = load_params(Path(__file__).resolve().parents[3] / "params.yaml")["select"]
    hourly = select["hardware_prices_usd_per_hour"][select["serving_hardware"]]
    [slm_answered] = [r for r in stored.values() if r.metadata["route"]["route"] == "slm"]
    slm_cost = slm_answered.latency_ms / 1000 * hourly / 3600
    assert slm_cost > 0 and summary["slm_cost_per_call"] == pytest.approx(slm_cost)
    # ... and the report says what that figure assumes: the router's own engine, the hardware billed, its price.
    assert slm_answered.metadata["route"]["backend"] == "embedded (transformers-eager)"
    basis = summary["slm_cost_basis"]
    assert (basis["engine"], basis["hardware"], basis["hourly_cost_usd"]) == (
        "embedded (transformers-eager)",
        select["serving_hardware"],
        hourly,
    )
    assert "SLM cost: embedded (transformers-eager)" in (tmp_path / "report" / "route_report.html").read_text()
    overall, clusters = summary["overall"], summary["clusters"]
    assert (overall["calls"], overall["slm_share"], overall["routes"]) == (
        4,
        0.25,
        {"slm": 1, "fallback": 1, "shadow": 1, "llm": 1},
    )
    assert overall["cost_saved_per_1k"] == pytest.approx(250 * (llm_cost - slm_cost))
    assert clusters[str(WEATHER)]["fallback_rate"] == 0.5 and clusters[str(SKI)]["agreement"] == 1.0
    assert clusters["-1"]["routes"] == {"llm": 1}
    page = (tmp_path / "report" / "route_report.html").read_text()
    assert "data:image/png;base64," in page and "<td>#1</td>" in page
    assert "SLM share 25.0%" in result.output

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.metrics["overall.slm_share"] == 0.25 and run.data.metrics["cluster_0.fallback_rate"] == 0.5


def test_a_full_slm_queue_sends_calls_to_the_llm(tmp_path):
    import threading

    release = threading.Event()

    def slow_slm(cluster_id: int, records: list[CallRecord]) -> list[str]:
        release.wait(timeout=20)
        return slm_stand_in(cluster_id, records)

    responder = RouterResponder(router_config(max_queued=1), cluster_model(), embed=bag_of_words, generator=slow_slm)
    with Proxy(tmp_path, responder) as proxy:
        assert proxy.ask(body(SKI, "Perth")).model == "gpt-4o"  # its SLM run holds the only queue place
        assert proxy.ask(body(WEATHER, "Paris")).model == "gpt-4o"
        assert proxy.ask(body(SKI, "Lima")).model == "gpt-4o"
        release.set()
        stored = proxy.records(3)
    assert stored[TASKS[WEATHER][1].format("Paris")].metadata["route"] == {
        "route": "llm",
        "cluster_id": WEATHER,
        "reason": "SLM busy",
    }
    assert stored[TASKS[SKI][1].format("Lima")].metadata["route"] == {
        "route": "shadow",
        "cluster_id": SKI,
        "reason": "SLM busy",
    }  # not compared: no agreement either way
    assert stored[TASKS[SKI][1].format("Perth")].metadata["route"]["agree"] is True


def test_calls_of_one_cluster_queued_behind_a_busy_slm_are_answered_in_one_batch(tmp_path):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release, seen = threading.Event(), []

    def held_slm(cluster_id: int, records: list[CallRecord]) -> list[str]:
        seen.append((cluster_id, [record.user_request for record in records]))
        release.wait(timeout=20)
        return slm_stand_in(cluster_id, records)

    responder = RouterResponder(router_config(), cluster_model(), embed=bag_of_words, generator=held_slm)
    places = ["Paris", "Tokyo", "Lima", "Cairo"]
    with Proxy(tmp_path, responder) as proxy, ThreadPoolExecutor(max_workers=5) as clients:
        first = clients.submit(proxy.ask, body(WEATHER, "Berlin"))
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:  # Berlin's generation holds the SLM
            time.sleep(0.02)
        queued = [clients.submit(proxy.ask, body(WEATHER, place)) for place in places]
        shadow = clients.submit(proxy.ask, body(SKI, "Perth"))
        while responder._queued < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        release.set()
        answers = [future.result(timeout=30) for future in [first, *queued]]
        shadow.result(timeout=30)
        stored = proxy.records(6)
    assert [only_call(answer) for answer in answers] == [
        ("get_weather", {"city": place}) for place in ["Berlin", *places]
    ]
    assert {answer.model for answer in answers} == {f"slm-cluster-{WEATHER}"}
    # Berlin alone, then the four queued weather calls as one batch (before the ski call queued after them).
    assert responder.batch_sizes == [1, 4, 1]
    assert [cluster for cluster, _ in seen] == [WEATHER, WEATHER, SKI]
    assert sorted(seen[1][1]) == sorted(TASKS[WEATHER][1].format(place) for place in places)
    assert stored[TASKS[SKI][1].format("Perth")].metadata["route"]["agree"] is True


def test_clusters_on_one_base_share_it_and_each_gets_its_own_adapter(tmp_path, tiny_model_dir, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import components.slm as slm
    from components.slm.adapter_pool import SLMPool

    adapters = []
    for seed in (1, 2):  # two different adapters: random, non-zero LoRA weights
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False),
        )
        model.save_pretrained(tmp_path / f"adapter{seed}")
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / f"adapter{seed}")  # as S5 does
        adapters.append(str(tmp_path / f"adapter{seed}"))
    records = [weather_record(0, "Paris"), weather_record(1, "Lima")]

    def alone(adapter_dir):  # what each cluster answers when its model is loaded on its own
        model, tokenizer = slm.load_model(tiny_model_dir, adapter_dir)
        return [g.text for g in slm.generate(model, tokenizer, records, max_new_tokens=6)]

    expected = {adapter: alone(adapter) for adapter in [*adapters, None]}
    assert len({tuple(texts) for texts in expected.values()}) == 3  # the adapters do change the answers

    loads, real_load = [], slm.load_model
    monkeypatch.setattr(slm, "load_model", lambda *args: loads.append(args) or real_load(*args))
    pool = SLMPool()
    for adapter in [adapters[0], adapters[1], None, adapters[0]]:
        assert pool.generate(tiny_model_dir, adapter, records, max_new_tokens=6) == expected[adapter], adapter
    assert loads == [(tiny_model_dir,)]  # one copy of the base for all three
    assert pool.loaded == {tiny_model_dir: sorted(str(Path(a).resolve()) for a in adapters)}


def test_route_report_prices_the_llm_by_the_calls_it_answered_and_the_slm_by_its_time():
    from components.serve.route_report import route_report

    def routed_call(route: str, cost_usd: float | None, latency_ms: float) -> CallRecord:
        record = weather_record(len(route), "Paris")
        return record.model_copy(
            update={
                "cost_usd": cost_usd,
                "latency_ms": latency_ms,
                "metadata": {"route": {"route": route, "cluster_id": WEATHER}},
            }
        )

    calls = [
        routed_call("llm", 0.004, 900.0),
        routed_call("fallback", 0.002, 1200.0),
        routed_call("slm", None, 360.0),
        routed_call("slm", None, 1080.0),
    ]
    calls[3].metadata["route"]["backend"] = "http://127.0.0.1:8788/v1 (cluster-3)"
    summary = route_report(calls, slm_hourly_cost_usd=3.6, slm_serving_hardware="nvidia-l4")
    # The cost names the backends that answered (one call stored without a backend) and the hardware billed.
    basis = summary["slm_cost_basis"]
    assert basis["engine"] == "http://127.0.0.1:8788/v1 (cluster-3), not recorded"
    assert (basis["hardware"], basis["hourly_cost_usd"]) == ("nvidia-l4", 3.6) and "cores" in basis["measured_on"]
    # LLM: the mean of the calls it answered (0.004, 0.002); SLM: mean 720 ms at 3.6 USD/h = 0.00072 USD.
    assert summary["llm_cost_per_call"] == pytest.approx(0.003)
    assert summary["slm_cost_per_call"] == pytest.approx(0.00072)
    assert summary["overall"]["slm_share"] == 0.5
    assert summary["overall"]["cost_saved_per_1k"] == pytest.approx(1000 * 0.5 * (0.003 - 0.00072))
