"""Serving follows the gate: a ``selective`` cluster's SLM answers only the calls whose calibrated confidence clears the
threshold (router), and serve-slm says how sure each answer was (``llm2slm``) and gives token ``logprobs``.

The router runs behind the logging proxy over real HTTP (the proxy test's bag-of-words cluster model, fake upstream
LLM, official `openai` client), once with SLM stand-ins that return confidence features and once with a real tiny
model through the default generation path; serve-slm runs a tiny model with a LoRA adapter."""

from __future__ import annotations

import json
import math

import pytest

from components.core.schema import CallRecord
from components.serve.backends import OpenAIBackend, OpenAIGenerator
from components.serve.service import RouterConfig, RouterResponder, request_record
from components.serve.slm_server import ServedAdapter, SLMServer, SLMServerConfig
from components.slm import Generation, parse_completion
from components.slm.confidence import FEATURES, Calibrator, SelectiveGate
from tests.unit.serve.test_router_service import WEATHER, Proxy, bag_of_words, body, cluster_model, stand_in_answer
from tests.unit.serve.test_slm_server import CITY_TOOL, KEY, MAX_NEW_TOKENS, Running, make_adapter, weather_request

# P(match) = sigmoid(2 + mean_logprob): a sure answer (mean log-prob -0.01) scores 0.88, an unsure one (-3) 0.27.
CALIBRATOR = Calibrator(FEATURES, (1.0, 0.0, 0.0, 0.0), 2.0)
THRESHOLD = 0.5
MEAN_LOGPROB = {"Paris": -0.01, "Berlin": -3.0, "Perth": -0.02}  # Tokyo: no confidence; Quito: the SLM fails


def write_gate(folder, calibrator: Calibrator = CALIBRATOR, threshold: float | None = THRESHOLD) -> str:
    """A gate file as S6 writes it (components/evaluate/router_config.py selective_gate)."""
    path = folder / "cluster_gate.json"
    path.write_text(json.dumps({**calibrator.to_dict(), "threshold": threshold, "target": 0.9, "coverage": 0.5}))
    return str(path)


def features(mean_logprob: float) -> dict[str, float]:
    return {"mean_logprob": mean_logprob, "min_logprob": mean_logprob - 1, "name_logprob": -0.1, "value_logprob": -0.2}


def sure_or_not(cluster_id: int, records: list[CallRecord]) -> list[Generation]:
    place = records[0].user_request.rstrip("?.! ").split()[-1]
    if place == "Quito":
        raise RuntimeError("the SLM crashed")
    return [
        Generation(
            text=stand_in_answer(record),
            latency_ms=5.0,
            prompt_tokens=10,
            completion_tokens=12,
            confidence=features(MEAN_LOGPROB[place]) if place in MEAN_LOGPROB else None,
        )
        for record in records
    ]


def selective_config(gate: str, router: dict | None = None, **serving) -> RouterConfig:
    cluster = {"mode": "selective", "base_model": "unused", "known_tools": ["get_weather"], "calibrator": gate}
    clusters = {WEATHER: {**cluster, "threshold": THRESHOLD, **serving}}
    return RouterConfig.model_validate({"clusters": clusters, **(router or {})})


def test_the_router_answers_with_the_slm_above_the_threshold_and_defers_below_it(tmp_path):
    config = selective_config(write_gate(tmp_path))
    responder = RouterResponder(config, cluster_model(), embed=bag_of_words, generator=sure_or_not)
    with Proxy(tmp_path / "store", responder) as proxy:
        served = {place: proxy.ask(body(WEATHER, place)) for place in ("Paris", "Berlin", "Tokyo", "Quito")}
        llm_calls = [request["body"]["messages"][-1]["content"] for request in proxy.upstream.state.requests]
        stored = proxy.records(4)
    assert {place: answer.model for place, answer in served.items()} == {
        "Paris": f"slm-cluster-{WEATHER}",  # sure: the SLM's answer is sent, the LLM is not asked
        "Berlin": "gpt-4o",
        "Tokyo": "gpt-4o",
        "Quito": "gpt-4o",
    }
    assert [text.split()[-1].rstrip("?") for text in llm_calls] == ["Berlin", "Tokyo", "Quito"]
    route = {text.split()[-1].rstrip("?"): record.metadata["route"] for text, record in stored.items()}
    assert all(r["latency_ms"] >= 0 for r in route.values())  # the SLM's time, recorded for deferred calls too
    backend = {"backend": "embedded (transformers-eager)", "cluster_id": WEATHER, "threshold": THRESHOLD}
    gate = SelectiveGate(CALIBRATOR, THRESHOLD)
    paris, berlin = (gate.calibrator.confidence(features(MEAN_LOGPROB[p])) for p in ("Paris", "Berlin"))
    assert paris == pytest.approx(1 / (1 + math.exp(-1.99))) and paris >= THRESHOLD > berlin
    expected = {
        "Paris": {
            "route": "slm",
            "reason": "confidence at or above threshold",
            "confidence": paris,
            "decision": "accept",
        },
        "Berlin": {"route": "llm", "reason": "confidence below threshold", "confidence": berlin, "decision": "defer"},
        "Tokyo": {"route": "llm", "reason": "no confidence from the SLM", "confidence": None, "decision": "defer"},
        "Quito": {"route": "llm", "reason": "SLM error: RuntimeError", "confidence": None, "decision": "defer"},
    }
    assert {place: {k: v for k, v in r.items() if k != "latency_ms"} for place, r in route.items()} == {
        place: {**backend, **fields} for place, fields in expected.items()
    }
    # The record holds what the agent got: the SLM's call for Paris, the LLM's (with its cost) for the others.
    assert not stored[body(WEATHER, "Paris")["messages"][-1]["content"]].cost_usd
    assert stored[body(WEATHER, "Berlin")["messages"][-1]["content"]].cost_usd > 0


def test_an_accepted_answer_that_fails_the_guardrail_still_falls_back(tmp_path):
    # Oslo's stand-in answer lacks the required city: sure of it or not, it is never sent.
    def sure_but_invalid(cluster_id: int, records: list[CallRecord]) -> list[Generation]:
        return [Generation(stand_in_answer(r), 5.0, 10, 12, features(-0.01)) for r in records]

    config = selective_config(write_gate(tmp_path))
    responder = RouterResponder(config, cluster_model(), embed=bag_of_words, generator=sure_but_invalid)
    with Proxy(tmp_path / "store", responder) as proxy:
        assert proxy.ask(body(WEATHER, "Oslo")).model == "gpt-4o"
        [record] = proxy.records(1).values()
    route = record.metadata["route"]
    assert (route["route"], route["decision"], route["reason"]) == ("fallback", "accept", "arguments invalid at root")


def test_a_selective_cluster_without_its_gate_file_is_refused_at_start(tmp_path):
    config = RouterConfig.model_validate(
        {"clusters": {WEATHER: {"mode": "selective", "base_model": "unused", "threshold": 0.5}}}
    )
    with pytest.raises(ValueError, match="selective but names no calibrator"):
        RouterResponder(config, cluster_model(), embed=bag_of_words, generator=sure_or_not)


@pytest.fixture(scope="module")
def city_adapter(tmp_path_factory, tiny_model_dir) -> str:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("selective-adapter") / "adapter", seed=1)


def routed_with_tiny_model(tmp_path, tiny_model_dir, adapter, threshold: float) -> dict:
    """One call through the proxy to a selective cluster served by the tiny model (default generator); its route."""
    gate = write_gate(tmp_path, threshold=None)
    config = selective_config(
        gate, {"max_new_tokens": MAX_NEW_TOKENS}, base_model=tiny_model_dir, adapter_dir=adapter, threshold=threshold
    )
    responder = RouterResponder(config, cluster_model(), embed=bag_of_words)  # the SLM pool
    with Proxy(tmp_path / f"store-{threshold}", responder) as proxy:
        answer = proxy.ask(body(WEATHER, "Paris", tools=[CITY_TOOL]))
        [record] = proxy.records(1).values()
    return {"model": answer.model, **record.metadata["route"]}


def test_the_router_applies_the_gate_to_a_real_tiny_models_confidence(tmp_path, tiny_model_dir, city_adapter):
    # Greedy decoding gives the same answer, so the same confidence, every time: a threshold at that confidence
    # accepts the answer and one just above it defers the call to the LLM.
    measured = routed_with_tiny_model(tmp_path, tiny_model_dir, city_adapter, threshold=0.0)
    confidence = measured["confidence"]
    assert measured["route"] == "slm" and measured["decision"] == "accept" and 0.0 < confidence < 1.0
    at = routed_with_tiny_model(tmp_path, tiny_model_dir, city_adapter, threshold=confidence)
    above = routed_with_tiny_model(tmp_path, tiny_model_dir, city_adapter, threshold=confidence + 1e-6)
    assert (at["model"], at["decision"], at["confidence"]) == (f"slm-cluster-{WEATHER}", "accept", confidence)
    assert (above["model"], above["route"], above["decision"]) == ("gpt-4o", "llm", "defer")
    assert above["latency_ms"] > 0  # the SLM ran before the call went on to the LLM


def test_serve_slm_says_how_sure_each_answer_is_and_returns_logprobs(
    tmp_path, tiny_model_dir, city_adapter, monkeypatch
):
    served = {0: ServedAdapter(tiny_model_dir, city_adapter), 1: ServedAdapter(tiny_model_dir, city_adapter)}
    gate = SelectiveGate.load(write_gate(tmp_path))
    server = SLMServer(served, SLMServerConfig(max_new_tokens=MAX_NEW_TOKENS, poll_s=0), [KEY], gates={0: gate})
    with Running(server) as running:
        gated = running.client.chat.completions.create(**weather_request("Paris"), logprobs=True)
        plain = running.client.chat.completions.create(**weather_request("Paris", model="cluster-1"))
        # The router's remote backend reads the features serve-slm sends and scores them with its own gate.
        monkeypatch.setenv("SELECTIVE_TEST_KEY", KEY)
        remote_backend = OpenAIBackend(
            base_url=f"{running.url}/v1", model="cluster-0", api_key_env="SELECTIVE_TEST_KEY"
        )
        backend = OpenAIGenerator(remote_backend, MAX_NEW_TOKENS)
        [remote] = backend([request_record(weather_request("Paris"))])
        backend.close()
    extra = gated.model_extra["llm2slm"]
    assert set(extra["features"]) == set(FEATURES)
    assert extra["confidence"] == pytest.approx(gate.calibrator.confidence(extra["features"]))
    assert extra["threshold"] == THRESHOLD and extra["calibrated"] is True
    assert extra["decision"] == ("accept" if extra["confidence"] >= THRESHOLD else "defer")
    # The same adapter without a gate: the same features, an uncalibrated confidence, no threshold or decision.
    other = plain.model_extra["llm2slm"]
    assert other["features"] == extra["features"] and other["calibrated"] is False
    assert other["confidence"] == pytest.approx(math.exp(extra["features"]["mean_logprob"]))
    assert "threshold" not in other and "decision" not in other and plain.choices[0].logprobs is None
    # logprobs: the generated tokens (stop token left out) spell the answer, each with its log-probability.
    content = gated.choices[0].logprobs.content
    text = "".join(token.token for token in content)
    assert parse_completion(text).tool_calls[0].name == gated.choices[0].message.tool_calls[0].function.name
    assert all(token.logprob <= 0 and token.bytes == list(token.token.encode()) for token in content)
    assert min(token.logprob for token in content) >= extra["features"]["min_logprob"]
    assert remote.confidence == extra["features"] and remote.text.startswith("<tool_call>")
