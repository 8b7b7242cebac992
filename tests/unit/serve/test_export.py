"""`llm2slm export`: each format loaded back where it runs here and answering a held-out call with a parseable,
schema-valid tool call. The tiny random-weight llama with a LoRA adapter (random, non-zero) whose prompt spec says
the cluster answers with one call: a server that decodes under the tools' grammar (what every bundle sets up) gets
a valid call even from random weights, so what is tested is the export: prompt, template, merge, conversion."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from gguf import GGUFReader
from typer.testing import CliRunner

from components.serve.export import export_gguf, export_vllm, llama_cpp_dir
from components.serve.export_templates import chat_template, prompt_mismatches
from components.serve.router import check_tool_calls
from components.serve.vllm_tool_parser import extract_calls
from components.slm import parse_completion
from components.slm.prompt_pruning import PromptSpec, save_prompt_spec
from tests.support.tiny_models import WEATHER_TOOL, weather_record
from tests.unit.serve.test_serve_slm_cli import cli_app, write_router_yaml
from tests.unit.serve.test_slm_server import CITY_TOOL, make_adapter, weather_request

# The adapter's spec: trained on the compact prompt (static system prompt dropped, tools as signatures), one call.
SPEC = PromptSpec(drop_system_prompt=True, tools="signatures", answers="tool_calls", max_tool_calls=1)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir) -> str:
    folder = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("export") / "adapter", seed=3)
    save_prompt_spec(SPEC, Path(folder))
    return folder


def answer(model, tokenizer, request: dict, template: str | None = None) -> str:
    """Greedy answer to an OpenAI request, prompted by the export's chat template and decoded under the tools'
    grammar (as a vLLM request with the bundle's guided decoding, or llm2slm's server, decodes)."""
    import torch

    from components.slm.generation import _stop_token_ids
    from components.slm.grammar import make_logits_processor

    prompt = tokenizer.apply_chat_template(
        request["messages"], tools=request["tools"], chat_template=template, tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    stop = _stop_token_ids(tokenizer) or [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    grammar = make_logits_processor(tokenizer, stop, [request["tools"]], required=True, max_calls=1)
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=48, do_sample=False, eos_token_id=stop, logits_processor=[grammar]
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def assert_valid_call(text: str, request: dict) -> None:
    message = parse_completion(text)
    assert [call.name for call in message.tool_calls] == ["get_weather"], text
    assert check_tool_calls(message, request) is None  # the router's schema guardrail accepts it
    calls, _ = extract_calls(text)  # what vLLM's hermes parser (and the bundle's plugin) reads
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (message.tool_calls[0].name, json.loads(message.tool_calls[0].arguments))
    ]


def test_the_chat_template_renders_requests_as_the_prompt_the_adapter_was_trained_on(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    book = {
        "type": "function",
        "function": {
            "name": "book",
            "description": "Book a room. Then pay later!",
            "parameters": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": ["a", "b"]},
                    "n": {"type": "integer", "default": 2},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "where": {"type": "object", "properties": {"x": {"type": ["string", "null"]}}},
                },
                "required": ["kind"],
            },
        },
    }
    multi_turn = weather_record(1, "Oslo").model_copy(update={"tools": [WEATHER_TOOL, book]})
    from components.core.schema import ChatMessage, ToolCall

    multi_turn.messages += [
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name="book", arguments='{"kind": "a"}')]),
        ChatMessage(role="tool", content="x" * 400, tool_call_id="c1"),
        ChatMessage(role="assistant", content="Booked."),
        ChatMessage(role="user", content="And the weather?"),
    ]
    records = [weather_record(0, "Paris"), multi_turn]
    specs = [
        None,
        PromptSpec(pruned=False),
        SPEC,
        PromptSpec(drop_system_prompt=True, tools="dropped"),
        PromptSpec(tools="bare_signatures", history_turns=1, max_tool_result_chars=300),
        PromptSpec(
            history_turns=0,
            max_tool_result_chars=50,
            max_tool_description_chars=12,
            known_tools=["book", "get_weather"],
            called_tools=["book"],
        ),
    ]
    for spec in specs:
        assert prompt_mismatches(tokenizer, chat_template(spec, tokenizer.chat_template), records, spec) == [], spec
    # The tokenizer's own template (plain ChatML) would not show the model its prompt.
    assert prompt_mismatches(tokenizer, tokenizer.chat_template, records[:1], SPEC) == ["r0"]


def test_export_merged_from_the_router_config_loads_in_transformers_and_answers_a_held_out_call(
    tmp_path, tiny_model_dir, adapter, monkeypatch
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components import slm

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "run"
    write_router_yaml(workdir, tiny_model_dir, adapter)
    result = CliRunner().invoke(
        cli_app(), ["export", "--cluster", "0", "--format", "merged", "--workdir", str(workdir)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    folder = workdir / "exports" / "cluster-0" / "merged"
    manifest = json.loads((folder / "llm2slm_export.json").read_text())
    assert manifest["answers"] == "tool_calls" and manifest["adapter_dir"] == adapter
    assert not (folder / "adapter_config.json").exists()  # one plain model

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    request = weather_request("Lima")
    assert_valid_call(answer(model, tokenizer, request), request)
    # The merge is the adapter: same logits as base + LoRA through llm2slm's loader.
    peft_model, peft_tokenizer = slm.load_model(tiny_model_dir, adapter)
    ids = peft_tokenizer("What is the weather in Lima?", return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**ids).logits, peft_model(**ids).logits, atol=1e-4)
    # An unknown cluster is refused clearly.
    refused = CliRunner().invoke(
        cli_app(), ["export", "--cluster", "7", "--format", "merged", "--workdir", str(workdir)]
    )
    assert refused.exit_code == 2 and "cluster 7 is not served" in refused.output


def test_export_falls_back_to_the_router_config_only_without_a_registry_or_a_champion(
    tmp_path, tiny_model_dir, adapter, monkeypatch
):
    import shutil

    from tasks.helpers.tracking import TrackingConfig, configure_tracking
    from tests.unit.serve.test_serve_slm_cli import register_version

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "run"
    write_router_yaml(workdir, tiny_model_dir, adapter)

    def export(name: str):
        command = ["export", "--cluster", "0", "--format", "vllm", "--workdir", str(workdir), "--out"]
        return CliRunner().invoke(cli_app(), [*command, str(tmp_path / name)])

    no_registry = export("no-registry")
    assert no_registry.exit_code == 0 and "no registry" in no_registry.output, no_registry.output
    assert not (workdir / "mlflow.db").exists()  # reading it did not create one
    configure_tracking(workdir.resolve(), TrackingConfig())  # the registry a run leaves, with no champion yet
    no_champion = export("no-champion")
    assert no_champion.exit_code == 0 and "no champion registered for llm2slm-cluster-0" in no_champion.output
    # A champion the registry cannot hand over (its files are gone): router.yaml's adapter may be a rolled-back
    # version, so nothing is exported.
    register_version(adapter, tiny_model_dir)
    shutil.rmtree(workdir / "mlartifacts")
    broken = export("broken")
    assert broken.exit_code == 2 and not (tmp_path / "broken").exists()
    assert "reading the champion of llm2slm-cluster-0 from the registry" in broken.output
    assert "Not falling back to the router config's adapter" in broken.output
    (workdir / "mlflow.db").write_bytes(b"not a database" * 100)  # an unreadable store: the same
    unreadable = export("unreadable")
    assert unreadable.exit_code == 2 and "DatabaseError" in unreadable.output, unreadable.output


def test_the_vllm_bundle_loads_through_peft_with_its_template_and_its_parser_reads_the_calls(
    tmp_path, tiny_model_dir, adapter
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bundle = export_vllm(3, tiny_model_dir, adapter, tmp_path / "bundle", tools=[CITY_TOOL])
    manifest = json.loads((bundle / "bundle.json").read_text())
    # SmolLM2's tokenizer spells <tool_call> with several tokens: vLLM's hermes parser would refuse it at start-up.
    assert manifest["tool_call_parser"] == "llm2slm_hermes" and not manifest["tokenizer_has_tool_call_tokens"]
    assert manifest["lora_modules"] == f"cluster-3={(bundle / 'adapter').resolve()}"
    script = (bundle / "serve.sh").read_text()
    for flag in (
        "--enable-lora",
        '--lora-modules "cluster-3=',
        "--chat-template",
        "--tool-call-parser llm2slm_hermes",
        "--tool-parser-plugin",
        "--enable-auto-tool-choice",
        "--max-lora-rank 8",
    ):
        assert flag in script, flag
    # infra/'s compose snippet serves a bundle with the same flags.
    compose = yaml.safe_load((Path(__file__).parents[3] / "infra/vllm/docker-compose.vllm.yml").read_text())
    flags = {item.split("=", 1)[0] for item in compose["services"]["vllm"]["command"]}
    assert {flag.split()[0] for flag in script.split("\\\n  ")[1:]} <= flags | {"vllm"}
    guided = json.loads((bundle / "guided_decoding.json").read_text())
    assert guided["request_extra_body"]["structured_outputs"]["grammar"] == guided["lark_grammar"]

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), bundle / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(bundle / "adapter")
    request = weather_request("Quito")
    text = answer(model, tokenizer, request, template=(bundle / "chat_template.jinja").read_text())
    assert_valid_call(text, request)
    [call] = extract_calls(text)[0]
    jsonschema.validate({"name": call["name"], "arguments": json.loads(call["arguments"])}, guided["call_json_schema"])


def test_serve_sh_passes_folders_with_spaces_and_dollars_to_vllm_unchanged(tmp_path, tiny_model_dir, adapter):
    import os
    import subprocess

    base = tmp_path / "my models" / "base $HOME `id` 'q'"
    bundle = export_vllm(3, tiny_model_dir, adapter, tmp_path / "bundles $PWD" / "c 3", base_folder=str(base))
    # A stand-in `vllm` that prints the arguments it was given, one per line.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    (bin_dir / "vllm").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("BASE_MODEL", "BUNDLE")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

    def arguments(**extra: str) -> list[str]:
        run = subprocess.run(
            ["sh", str(bundle / "serve.sh"), "--port", "8000"], env={**env, **extra}, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines()

    given = arguments()
    assert given[:2] == ["serve", str(base)] and given[-2:] == ["--port", "8000"]
    assert given[given.index("--lora-modules") + 1] == f"cluster-3={bundle}/adapter"
    assert given[given.index("--chat-template") + 1] == f"{bundle}/chat_template.jinja"
    assert given[given.index("--tool-parser-plugin") + 1] == f"{bundle}/llm2slm_tool_parser.py"
    assert arguments(BASE_MODEL="/srv/base model")[1] == "/srv/base model"  # the override still works


def test_the_parser_reads_what_the_prompt_spec_makes_the_slm_write():
    from components.slm.prompt import render_target

    record = weather_record(0, "Paris")
    two = record.response.model_copy(update={"tool_calls": record.response.tool_calls * 2})
    calls, content = extract_calls(render_target(two))
    assert content is None and [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert extract_calls("It is sunny.") == ([], "It is sunny.")
    # An answer cut by the token budget: the hermes pattern reads the unterminated last call too.
    assert extract_calls('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}')[0][0]["name"]


@pytest.mark.skipif(
    llama_cpp_dir() is None,
    reason="GGUF export needs llama.cpp's convert_hf_to_gguf.py: set LLM2SLM_LLAMA_CPP_DIR (vendor/llama.cpp of "
    "llama-cpp-python's sdist)",
)
def test_export_gguf_loads_through_transformers_gguf_file_and_writes_an_ollama_modelfile(
    tmp_path, tiny_model_dir, adapter
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_gguf(0, tiny_model_dir, adapter, tmp_path / "gguf", tools=[CITY_TOOL], outtype="f32")
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf")
    request = weather_request("Perth")
    template = (out / "merged" / "chat_template.jinja").read_text()
    # The GGUF carries the tool-aware template itself (llama.cpp's --jinja reads it from there).
    reader = GGUFReader(out / "model.gguf")
    stored = reader.fields["tokenizer.chat_template"]
    assert bytes(stored.parts[stored.data[0]]).decode() == template
    assert_valid_call(answer(model, tokenizer, request, template=template), request)

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    body = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for needed in (
        "{{ if .Tools }}",
        "{{ range $i, $call := .ToolCalls }}",
        '<tool_call>{"name": ',
        "{{ $call.Function.Arguments }}}</tool_call>",
        "Tool result: ",
        "<|im_start|>assistant\n",
    ):
        assert needed in body, needed
    assert "{{ .System }}" not in body  # the spec drops the static system prompt
    opened = body.count("{{ if ") + body.count("{{ range ") + body.count("{{ with ")
    assert opened == body.count("{{ end }}")  # a template Go can parse: every block closed
