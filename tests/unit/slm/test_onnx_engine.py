"""The default engine, ONNX Runtime GenAI (a dependency: these tests always run): the tiny llama with two LoRA
adapters answers as the transformers pool does, under the tool grammar, with the same token log-probabilities (the
selective gate's confidence), one call or a batch; S6 answers through it; what it cannot load goes to eager, with
a warning."""

from __future__ import annotations

import json
import logging

import pytest

from components.serve.router import check_tool_calls
from components.serve.service import request_record
from components.slm import parse_completion
from components.slm.engines import PoolEngine, ServedAdapter, WithFallback, make_engine
from components.slm.onnx_engine import OnnxGenaiEngine
from tests.unit.serve.test_slm_server import make_adapter, weather_request

CITIES = ("Paris", "Oslo", "Lima", "Perth")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2SLM_CACHE", str(tmp_path / "cache"))  # the converted models land here


def test_onnx_answers_as_eager_with_the_grammar_and_the_same_log_probabilities(tmp_path, tiny_model_dir, cache):
    adapters = [make_adapter(tiny_model_dir, tmp_path / f"adapter{seed}", seed) for seed in (1, 2)]
    engine, pool = OnnxGenaiEngine(threads=1), PoolEngine()
    requests = [weather_request(city) for city in CITIES]
    records = [request_record(request) for request in requests]
    answers = {}
    for adapter in adapters:
        served = ServedAdapter(tiny_model_dir, adapter)
        batched = engine.generate(served, records, 48)  # one batch of 4, right-padded
        alone = [engine.generate(served, [record], 48)[0] for record in records]
        expected = [pool.generate(served, [record], 48)[0] for record in records]
        assert [g.text for g in batched] == [g.text for g in alone] == [g.text for g in expected]
        for got, eager in zip(batched, expected, strict=True):
            assert [token for token, _ in got.token_logprobs] == [token for token, _ in eager.token_logprobs]
            assert [lp for _, lp in got.token_logprobs] == pytest.approx(
                [lp for _, lp in eager.token_logprobs], abs=1e-3
            )
            assert got.confidence == pytest.approx(eager.confidence, abs=1e-3)
            assert got.first_token_ms > 0 and got.latency_ms > 0
        for generation, request in zip(batched, requests, strict=True):
            message = parse_completion(generation.text)
            assert len(message.tool_calls) == 1 and check_tool_calls(message, request) is None
        answers[adapter] = [g.text for g in batched]
    assert answers[adapters[0]] != answers[adapters[1]]  # each cluster answers with its own LoRA
    assert len(engine.loaded) == 2
    engine.unload(ServedAdapter(tiny_model_dir, adapters[0]))
    assert engine.loaded == [ServedAdapter(tiny_model_dir, adapters[1])]
    assert engine.describe()["engine"] == "onnxruntime-genai"


def test_s6_answers_and_scores_its_confidence_on_the_default_engine(tmp_path, tiny_model_dir, cache):
    """S6's default is the engine serve-slm serves with: the same answers as eager, and each answer's confidence
    from this engine's own log-probabilities (what the selective gate is fitted on)."""
    from components.evaluate.evaluation import EvaluateConfig
    from tasks.evaluate import make_tuned_answerer
    from tasks.helpers.progress import Progress

    model = {"base_model": tiny_model_dir, "adapter_dir": make_adapter(tiny_model_dir, tmp_path / "adapter", 1)}
    records = [request_record(weather_request(city)) for city in CITIES[:3]]
    served_name, served = make_tuned_answerer(EvaluateConfig(max_new_tokens=48, batch_size=2))
    eager_name, eager = make_tuned_answerer(EvaluateConfig(engine="transformers", max_new_tokens=48))
    got, expected = served(model, records, Progress("test")), eager(model, records, Progress("test"))
    assert (served_name, eager_name) == ("onnxruntime-genai", "transformers-eager")
    assert [answer[0] for answer in got] == [answer[0] for answer in expected]
    for (_, latency_ms, confidence), (_, _, eager_confidence) in zip(got, expected, strict=True):
        assert latency_ms > 0 and confidence == pytest.approx(eager_confidence, abs=1e-3)
    with pytest.raises(ValueError, match="always decodes under the tool grammar"):
        EvaluateConfig(engine="onnxruntime-genai", constrained_decoding=False)


def test_what_the_default_engine_cannot_load_is_answered_by_eager_with_a_warning(tmp_path, cache, caplog):
    """A GPT-2 folder: the model builder has no GPT-2 converter, the pool loads it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from components.slm import prepare_model
    from tests.support.tiny_models import SMOLLM2

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(SMOLLM2))
    folder = tmp_path / "gpt2"
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer), n_positions=1024)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    engine = make_engine("onnxruntime-genai", threads=1)
    assert isinstance(engine, WithFallback) and engine.name == "onnxruntime-genai"
    served = ServedAdapter(str(folder))
    record = request_record(weather_request("Paris"))
    with caplog.at_level(logging.WARNING, logger="components.slm.engines"):
        [generation] = engine.generate(served, [record], 8)
    assert "transformers eager answers for it" in caplog.text and str(folder) in caplog.text
    [expected] = PoolEngine().generate(served, [record], 8)
    assert generation.text == expected.text
    assert engine.name == "onnxruntime-genai+transformers-eager"
    assert str(folder) in engine.describe()["fallback"]["models"]


def test_the_engine_setting_names_the_engine():
    assert make_engine().name == "onnxruntime-genai"
    assert make_engine("transformers").name == "transformers-eager"
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("vllm")
    assert json.loads(json.dumps(make_engine().describe()))["constrained_decoding"] is True
