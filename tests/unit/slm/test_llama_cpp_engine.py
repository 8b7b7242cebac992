"""The llama.cpp engine (optional extra): the tiny llama and two LoRA adapters on one GGUF base answer as the
transformers pool does, with the tool grammar kept; skipped with the reason when llama-cpp-python or a llama.cpp
tree is missing (CI has neither)."""

from __future__ import annotations

import json

import pytest

from components.serve.router import check_tool_calls
from components.serve.service import request_record
from components.slm import parse_completion
from components.slm.engines import PoolEngine, ServedAdapter, make_engine
from components.slm.llama_cpp_engine import available
from tests.unit.serve.test_slm_server import make_adapter, weather_request

pytestmark = pytest.mark.skipif(available() is not None, reason=f"llama.cpp engine: {available()}")


def test_llama_cpp_keeps_the_grammar_and_switches_adapters_like_the_pool(tmp_path, tiny_model_dir, monkeypatch):
    from components.slm.llama_cpp_engine import LlamaCppEngine

    monkeypatch.setenv("LLM2SLM_CACHE", str(tmp_path / "cache"))
    adapters = [make_adapter(tiny_model_dir, tmp_path / f"adapter{seed}", seed) for seed in (1, 2)]
    engine = LlamaCppEngine(outtype="f32", n_threads=1)
    pool = PoolEngine()
    requests = [weather_request(city) for city in ("Paris", "Oslo")]
    records = [request_record(request) for request in requests]
    answers = {}
    for adapter in adapters:  # switching back and forth on one base
        served = ServedAdapter(tiny_model_dir, adapter)
        engine.load(served)
        got = [g.text for record in records for g in engine.generate(served, [record], 48)]
        expected = [g.text for record in records for g in pool.generate(served, [record], 48)]
        assert got == expected
        for text, request in zip(got, requests, strict=True):
            message = parse_completion(text)
            assert len(message.tool_calls) == 1 and check_tool_calls(message, request) is None
            assert set(json.loads(message.tool_calls[0].arguments)) == {"city"}
        answers[adapter] = got
    assert len(engine._bases) == 1 and len(next(iter(engine._bases.values()))["adapters"]) == 2  # one base copy
    again = ServedAdapter(tiny_model_dir, adapters[0])
    assert [g.text for g in engine.generate(again, records[:1], 48)] == answers[adapters[0]][:1]
    engine.unload(again)
    assert engine.describe()["engine"] == "llama-cpp"


def test_the_engine_setting_names_the_engine():
    assert make_engine("llama-cpp", threads=1).name == "llama-cpp"
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("vllm")


def test_s6_answers_through_the_serving_engine_when_evaluate_engine_names_it(tmp_path, tiny_model_dir, monkeypatch):
    """evaluate.engine: llama-cpp gives S6 the answers (and latencies) of the engine serve-slm would serve with: the
    same texts as S6's eager path, and the engine's name for the summary's cost basis."""
    from components.evaluate.evaluation import EvaluateConfig
    from tasks.evaluate import make_tuned_answerer
    from tasks.helpers.progress import Progress

    monkeypatch.setenv("LLM2SLM_CACHE", str(tmp_path / "cache"))
    model = {"base_model": tiny_model_dir, "adapter_dir": make_adapter(tiny_model_dir, tmp_path / "adapter", 1)}
    records = [request_record(weather_request(city)) for city in ("Paris", "Oslo")]
    served_name, served = make_tuned_answerer(EvaluateConfig(engine="llama-cpp", engine_threads=1, max_new_tokens=48))
    eager_name, eager = make_tuned_answerer(EvaluateConfig(engine="transformers", max_new_tokens=48, batch_size=1))
    got, expected = served(model, records, Progress("test")), eager(model, records, Progress("test"))
    assert (served_name, eager_name) == ("llama-cpp", "transformers-eager")
    assert [answer[0] for answer in got] == [answer[0] for answer in expected]
    assert all(answer[1] > 0 for answer in got)
    assert all(answer[2] is not None for answer in expected)  # the eager decode scores its tokens (selective)
    with pytest.raises(ValueError, match="always decodes under the tool grammar"):
        EvaluateConfig(engine="llama-cpp", constrained_decoding=False)
