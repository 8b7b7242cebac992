"""The router's routing and guardrail tests (tests/unit/serve/test_router_service.py), run again with every cluster's
SLM behind an OpenAI-compatible server given by URL (``backend: {base_url, model}``): the embedded SLM server on
127.0.0.1, whose engine answers as the stand-in SLM does. The answers cross HTTP twice (router -> SLM server ->
router) as ``tool_calls``, so the same assertions hold only if nothing is lost on the way. A last test runs a real
tiny model behind the server."""

from __future__ import annotations

import json

import pytest

from components.core.schema import CallRecord
from components.serve.backends import OpenAIBackend, chat_request, completion_text
from components.serve.service import RouterConfig, RouterResponder
from components.serve.slm_server import ServedAdapter, SLMServer, SLMServerConfig
from components.slm import Generation, parse_completion, render_target
from tests.support.fake_openai import serve_in_thread
from tests.unit.serve import test_router_service as router_tests
from tests.unit.serve.test_router_service import (
    SKI,
    TRIPS,
    WEATHER,
    Proxy,
    bag_of_words,
    body,
    cluster_model,
    router_config,
    stand_in_answer,
)

# Collected again here with this module's `routed`, in their own order: each waits for the store's running count.
test_on_mode_answers_with_the_slm_and_falls_back_on_an_invalid_tool_call = (
    router_tests.test_on_mode_answers_with_the_slm_and_falls_back_on_an_invalid_tool_call
)
test_shadow_mode_answers_with_the_llm_and_records_agreement = (
    router_tests.test_shadow_mode_answers_with_the_llm_and_records_agreement
)
test_canary_mode_sends_the_seeded_share_to_the_slm = router_tests.test_canary_mode_sends_the_seeded_share_to_the_slm

SLM_KEY = "sk-slm-backend"
KEY_ENV = "LLM2SLM_TEST_SLM_KEY"


class StandInEngine:
    """The SLM server's engine answering as test_router_service's stand-in SLM."""

    name = "stand-in"

    def load(self, served) -> None: ...

    def unload(self, served) -> None: ...

    def describe(self) -> dict:
        return {"engine": self.name}

    def generate(self, served, records: list[CallRecord], max_new_tokens: int) -> list[Generation]:
        return [Generation(stand_in_answer(record), 1.0, 10, 5) for record in records]


def remote_config(url: str, **overrides) -> RouterConfig:
    config = router_config(**overrides)
    backend = {"base_url": f"{url}/v1", "api_key_env": KEY_ENV}
    clusters = {
        cluster_id: serving.model_copy(update={"backend": OpenAIBackend(**backend, model=f"cluster-{cluster_id}")})
        for cluster_id, serving in config.clusters.items()
    }
    return config.model_copy(update={"clusters": clusters})


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    served = {cluster_id: ServedAdapter("unused") for cluster_id in (WEATHER, SKI, TRIPS)}
    server = SLMServer(served, SLMServerConfig(), [SLM_KEY], engine=StandInEngine())
    with pytest.MonkeyPatch.context() as patch, serve_in_thread(server.app) as url:
        patch.setenv(KEY_ENV, SLM_KEY)
        responder = RouterResponder(remote_config(url), cluster_model(), embed=bag_of_words)  # the default generator
        backend = f"{url}/v1 (cluster-{{cluster}})"
        with Proxy(tmp_path_factory.mktemp("router-store"), responder, backend) as proxy:
            yield proxy
        # Every SLM answer above came through the server, none from an in-process model.
        assert (
            server.metrics.registry.get_sample_value(
                "llm2slm_slm_requests_total", {"model": f"cluster-{WEATHER}", "status": "200"}
            )
            > 0
        )
        assert responder.pool.loaded == {}


def test_a_tool_call_survives_the_round_trip_through_the_openai_form():
    record = CallRecord.model_validate(
        {"record_id": "r", "messages": body(WEATHER, "Paris")["messages"], "response": {"role": "assistant"}}
    )
    request = chat_request(record, "cluster-0", 32)
    assert request["messages"] == body(WEATHER, "Paris")["messages"] and request["max_tokens"] == 32
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    answer = {"choices": [{"message": {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]}}]}  # fmt: skip
    assert completion_text(answer) == text == render_target(parse_completion(text))
    with pytest.raises(ValueError, match="without a choice"):
        completion_text({"choices": []})


def test_a_missing_backend_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=KEY_ENV):
        RouterResponder(remote_config("http://127.0.0.1:9"), cluster_model(), embed=bag_of_words)


def test_an_unreachable_backend_sends_the_call_to_the_llm(tmp_path, monkeypatch):
    from tests.support.fake_openai import free_port

    monkeypatch.setenv(KEY_ENV, SLM_KEY)
    url = f"http://127.0.0.1:{free_port()}"
    responder = RouterResponder(remote_config(url), cluster_model(), embed=bag_of_words)
    with Proxy(tmp_path, responder) as proxy:
        assert proxy.ask(body(WEATHER, "Paris")).model == "gpt-4o"
        [record] = proxy.records(1).values()
    assert record.metadata["route"] == {
        "route": "fallback",
        "cluster_id": WEATHER,
        "reason": "SLM error: ConnectError",
        "backend": f"{url}/v1 (cluster-{WEATHER})",
    }


def test_a_real_tiny_slm_behind_the_server_answers_for_the_router(tmp_path, tiny_model_dir, monkeypatch):
    from tests.unit.serve.test_slm_server import CITY_TOOL, make_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    server = SLMServer({WEATHER: ServedAdapter(tiny_model_dir, adapter)}, SLMServerConfig(max_new_tokens=48), [SLM_KEY])
    monkeypatch.setenv(KEY_ENV, SLM_KEY)
    with serve_in_thread(server.app) as url:
        config = remote_config(url)
        config = config.model_copy(update={"clusters": {WEATHER: config.clusters[WEATHER]}})
        responder = RouterResponder(config, cluster_model(), embed=bag_of_words)
        with Proxy(tmp_path / "store", responder) as proxy:
            answer = proxy.ask({**body(WEATHER, "Paris"), "tools": [CITY_TOOL]})
            [record] = proxy.records(1).values()
    assert answer.model == f"slm-cluster-{WEATHER}"  # the grammar made the random model's call valid
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    assert record.metadata["route"] == {
        "route": "slm",
        "cluster_id": WEATHER,
        "reason": "on",
        "backend": f"{url}/v1 (cluster-{WEATHER})",
    }
