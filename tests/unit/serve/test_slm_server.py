"""The embedded SLM server over real HTTP with the official `openai` client: a tiny random-weight llama with LoRA
adapters (random, non-zero weights) whose prompt spec says the cluster answers with calls, so the tool grammar
makes even a random model's answer a schema-valid call. Hot reload is driven by a resolver the test changes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from components.core.schema import CallRecord
from components.serve.router import check_tool_calls
from components.serve.slm_server import ServedAdapter, SLMServer, SLMServerConfig
from components.slm import Generation, parse_completion
from tests.support.fake_openai import serve_in_thread
from tests.support.tiny_models import CITIES, WEATHER_TOOL

KEY = "sk-slm-server-test"
MAX_NEW_TOKENS = 48
# The weather tool with the city as an enum: a random model never closes a free string, so only an enum gives it a
# call that ends within the budget (a trained model closes its strings itself).
CITY_TOOL = {
    "type": "function",
    "function": {
        **WEATHER_TOOL["function"],
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": CITIES}},
            "required": ["city"],
        },
    },
}


def make_adapter(base_dir: str, folder: Path, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.slm.prompt_pruning import PromptSpec, save_prompt_spec

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)  # as S5 does
    # The cluster's training answers were all single calls (what S5 records): decoding then requires one call.
    save_prompt_spec(PromptSpec(pruned=False, answers="tool_calls", max_tool_calls=1), folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> list[str]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_model_dir, root / f"adapter{seed}", seed) for seed in (1, 2)]


def weather_request(city: str, **extra) -> dict:
    return {
        "model": "cluster-0",
        "messages": [
            {"role": "system", "content": "You help travellers."},
            {"role": "user", "content": f"What is the weather in {city}?"},
        ],
        "tools": [CITY_TOOL],
        **extra,
    }


class Running:
    """An SLMServer served on 127.0.0.1, with a client holding the key."""

    def __init__(self, server: SLMServer) -> None:
        self.server = server

    def __enter__(self) -> Running:
        self._context = serve_in_thread(self.server.app)
        self.url = self._context.__enter__()
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0)
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


@pytest.fixture(scope="module")
def running(tiny_model_dir, adapters):
    served = {0: ServedAdapter(tiny_model_dir, adapters[0]), 1: ServedAdapter(tiny_model_dir, None)}
    server = SLMServer(served, SLMServerConfig(max_new_tokens=MAX_NEW_TOKENS, poll_s=0), [KEY])
    with Running(server) as running:
        yield running


def only_call(completion) -> tuple[str, dict]:
    [call] = completion.choices[0].message.tool_calls
    return call.function.name, json.loads(call.function.arguments)


def test_the_openai_client_lists_the_clusters_and_gets_schema_valid_tool_calls(running, tiny_model_dir, adapters):
    models = {model.id: model for model in running.client.models.list().data}
    assert set(models) == {"cluster-0", "cluster-1"}
    assert models["cluster-0"].model_extra["parent"] == tiny_model_dir
    assert models["cluster-0"].model_extra["root"] == adapters[0]
    for city in ("Paris", "Oslo"):
        request = weather_request(city)
        answer = running.client.chat.completions.create(**request)
        assert answer.model == "cluster-0" and answer.choices[0].finish_reason == "tool_calls"
        name, arguments = only_call(answer)
        assert name == "get_weather" and set(arguments) == {"city"} and arguments["city"] in CITIES
        # The router's own guardrail (schema check against the request's tools) accepts it.
        message = parse_completion(f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(arguments)}}}</tool_call>')
        assert check_tool_calls(message, request) is None
        assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    # The plain base (no prompt spec: it may answer in text) is served too.
    assert running.client.chat.completions.create(**weather_request("Paris", model="cluster-1")).model == "cluster-1"


def test_keys_unknown_models_and_unsupported_requests_get_clear_errors(running):
    for bad_key in ("", "sk-wrong"):
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=bad_key or "x", max_retries=0)
        if not bad_key:
            client = openai.OpenAI(
                base_url=f"{running.url}/v1", api_key="x", max_retries=0, default_headers={"Authorization": ""}
            )
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(**weather_request("Paris"))
    with pytest.raises(openai.NotFoundError, match="cluster-0, cluster-1"):
        running.client.chat.completions.create(**weather_request("Paris", model="gpt-4o"))
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        running.client.chat.completions.create(**weather_request("Paris", n=2))
    with pytest.raises(openai.BadRequestError, match="unreadable request"):
        running.client.chat.completions.create(model="cluster-0", messages=[{"role": "wizard", "content": "hi"}])
    assert httpx.get(f"{running.url}/healthz").json()["models"] == ["cluster-0", "cluster-1"]


def test_a_streaming_request_gets_the_same_call_as_one_chunk(running):
    plain = running.client.chat.completions.create(**weather_request("Lima"))
    chunks = list(running.client.chat.completions.create(**weather_request("Lima", stream=True)))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices and chunk.choices[0].delta.tool_calls]
    [call] = deltas[0].tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == only_call(plain)


def test_metrics_count_requests_tokens_and_latency_per_model(running):
    before = running.metric("llm2slm_slm_requests_total", model="cluster-1", status="200")
    tokens_before = running.metric("llm2slm_slm_tokens_total", model="cluster-1", kind="completion")
    answers = [
        running.client.chat.completions.create(**weather_request(c, model="cluster-1")) for c in ("Oslo", "Rome")
    ]
    assert running.metric("llm2slm_slm_requests_total", model="cluster-1", status="200") == before + 2
    written = sum(answer.usage.completion_tokens for answer in answers)
    assert running.metric("llm2slm_slm_tokens_total", model="cluster-1", kind="completion") == tokens_before + written
    assert running.metric("llm2slm_slm_request_latency_seconds_count", model="cluster-1") >= 2
    with pytest.raises(openai.BadRequestError):
        running.client.chat.completions.create(**weather_request("Paris", model="cluster-1", max_tokens=0))
    assert running.metric("llm2slm_slm_requests_total", model="cluster-1", status="400") >= 1
    # The cost context: which engine and machine answer, and what was measured on them.
    engine = httpx.get(f"{running.url}/v1/engine", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert engine["engine"] == "onnxruntime-genai" and engine["hardware"] == "cpu-2-cores"
    measured = engine["measured"]["cluster-1"]
    assert measured["calls"] >= 2 and measured["tokens_per_s"] > 0 and measured["cost_per_1k_calls_usd"] > 0
    assert httpx.get(f"{running.url}/v1/engine").status_code == 401


def model_labels(running) -> set[str]:
    text = httpx.get(f"{running.url}/metrics").text
    return {
        sample.labels["model"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "model" in sample.labels
    }


def test_metrics_label_only_served_model_ids_and_other_spellings_are_unknown_models(running):
    # Each of these once reached cluster-0 (or 404'd) under its own label: one new series per spelling.
    for spelling in ("cluster--0", "cluster-00", "cluster-007", "gpt-4o"):
        with pytest.raises(openai.NotFoundError, match="served: cluster-0, cluster-1"):
            running.client.chat.completions.create(**weather_request("Paris", model=spelling))
    assert running.metric("llm2slm_slm_requests_total", model="unknown", status="404") >= 4
    assert model_labels(running) <= {"cluster-0", "cluster-1", "unknown"}


class HeldEngine:
    """Answers every call with a fixed valid call, holding the first batch until released (to queue the rest)."""

    name = "held"

    def __init__(self) -> None:
        self.release, self.batches = threading.Event(), []

    def load(self, served) -> None: ...

    def unload(self, served) -> None: ...

    def describe(self) -> dict:
        return {"engine": self.name}

    def generate(self, served, records: list[CallRecord], max_new_tokens: int) -> list[Generation]:
        self.batches.append([record.user_request for record in records])
        self.release.wait(timeout=20)
        text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        return [Generation(text, 1.0, 10, 5) for _ in records]


def test_concurrent_calls_of_one_model_are_answered_in_one_batch():
    from concurrent.futures import ThreadPoolExecutor

    engine = HeldEngine()
    served = {0: ServedAdapter("base"), 1: ServedAdapter("base", "other")}
    server = SLMServer(served, SLMServerConfig(max_batch_size=8), [KEY], engine=engine)
    with Running(server) as running, ThreadPoolExecutor(max_workers=6) as clients:
        first = clients.submit(running.client.chat.completions.create, **weather_request("Berlin"))
        deadline = time.monotonic() + 20
        while not engine.batches and time.monotonic() < deadline:
            time.sleep(0.02)
        cities = ["Tokyo", "Lima", "Cairo", "Quito"]
        queued = [clients.submit(running.client.chat.completions.create, **weather_request(c)) for c in cities]
        other = clients.submit(running.client.chat.completions.create, **weather_request("Oslo", model="cluster-1"))
        while server.worker.queued < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        engine.release.set()
        answers = [future.result(timeout=30) for future in [first, *queued, other]]
    assert [only_call(answer) for answer in answers] == [("get_weather", {"city": "Paris"})] * 6
    assert server.worker.batch_sizes == [1, 4, 1]
    assert sorted(engine.batches[1]) == sorted(f"What is the weather in {c}?" for c in cities)


def test_a_promotion_and_a_rollback_reach_the_running_server_without_restart(tiny_model_dir, adapters):
    from components import slm

    def alone(adapter_dir: str) -> tuple[str, dict]:
        """What this adapter answers when loaded on its own (the path S6 evaluated it on)."""
        model, tokenizer = slm.load_model(tiny_model_dir, adapter_dir)
        record = CallRecord.model_validate(
            {
                "record_id": "x",
                "messages": weather_request("Perth")["messages"],
                "tools": [CITY_TOOL],
                "response": {"role": "assistant"},
            }
        )
        [call] = parse_completion(
            slm.generate(model, tokenizer, [record], max_new_tokens=MAX_NEW_TOKENS)[0].text
        ).tool_calls
        return call.name, json.loads(call.arguments)

    expected = [alone(adapter) for adapter in adapters]
    assert expected[0] != expected[1]  # the two adapters answer differently: a switch is visible

    champion = {"adapter": adapters[0]}
    resolve = lambda: {0: ServedAdapter(tiny_model_dir, champion["adapter"])}  # noqa: E731
    config = SLMServerConfig(max_new_tokens=MAX_NEW_TOKENS, poll_s=0.1)
    server = SLMServer(resolve(), config, [KEY], resolve=resolve)

    def served_after(change: str) -> tuple[str, dict]:
        champion["adapter"] = change
        deadline = time.monotonic() + 30
        while server.served[0].adapter_dir != change and time.monotonic() < deadline:
            time.sleep(0.05)
        return only_call(running.client.chat.completions.create(**weather_request("Perth")))

    with Running(server) as running:
        assert only_call(running.client.chat.completions.create(**weather_request("Perth"))) == expected[0]
        assert served_after(adapters[1]) == expected[1]  # promotion
        assert running.metric("llm2slm_slm_adapter_reloads_total", model="cluster-0", outcome="loaded") == 1
        assert served_after(adapters[0]) == expected[0]  # rollback
        # Only the served adapter stays loaded in the default engine (the other was freed)...
        assert server.engine.primary.loaded == [ServedAdapter(tiny_model_dir, adapters[0])]
        # ...and a broken one leaves the cluster on its adapter.
        champion["adapter"] = str(Path(adapters[0]).parent / "missing")
        deadline = time.monotonic() + 30
        while not running.metric("llm2slm_slm_adapter_reloads_total", outcome="failed") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.served[0].adapter_dir == adapters[0]
        assert only_call(running.client.chat.completions.create(**weather_request("Perth"))) == expected[0]
    assert len(server.reloads) == 2


def test_a_body_over_the_limit_gets_413_before_it_is_read():
    from components.serve.limits import DEFAULT_MAX_REQUEST_BYTES

    assert SLMServerConfig().max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 8 * 1024 * 1024
    engine = HeldEngine()
    engine.release.set()
    server = SLMServer({0: ServedAdapter("base")}, SLMServerConfig(max_request_bytes=4096), [KEY], engine=engine)
    with Running(server) as running:
        assert only_call(running.client.chat.completions.create(**weather_request("Oslo")))[0] == "get_weather"
        large = weather_request("Oslo")
        large["messages"][0]["content"] = "x" * 5000
        with pytest.raises(openai.APIStatusError) as refused:
            running.client.chat.completions.create(**large)
        assert refused.value.status_code == 413
        assert refused.value.body["code"] == "request_too_large" and "4096 bytes" in refused.value.body["message"]
        # Without a Content-Length (chunked), the body is cut off while it arrives.
        chunks = (json.dumps(large).encode()[i : i + 1000] for i in range(0, 6000, 1000))
        answer = httpx.post(
            f"{running.url}/v1/chat/completions", content=chunks, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
        assert running.metric("llm2slm_slm_requests_total", model="unknown", status="413") == 2
    assert len(engine.batches) == 1  # only the small request reached the engine
