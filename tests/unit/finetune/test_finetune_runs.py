"""S5 beyond one training loop: prompt pruning stored with the adapter, validation and early stopping, resume
after a kill, skipping a finished run, device rules, per-cluster overrides, merged output (tiny random llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.core.schema import CallRecord, ChatMessage
from components.finetune.runs import (
    Device,
    UnsupportedDeviceError,
    cpu_flags,
    detect_device,
    prepare_checkpoints,
    resolve_precision,
    split_validation,
)
from components.finetune.train import FinetuneConfig, LoraSettings, build_trainer, config_for_cluster, finetune
from components.slm import build_messages, generate, load_model
from components.slm.prompt_pruning import (
    PROMPT_SPEC_FILE,
    PruningSettings,
    derive_prompt_spec,
    load_prompt_spec,
    load_prompt_transform,
    save_prompt_spec,
    spec_accepts,
)
from tests.support.tiny_models import WEATHER_TOOL


def tiny_config(**overrides: object) -> FinetuneConfig:
    settings = {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_length": 256,
        "lora": LoraSettings(r=4, alpha=8, dropout=0.0),
        "min_records_for_validation": 100,
        **overrides,
    }
    return FinetuneConfig(**settings)


class Interrupted(Exception):
    """Stands for a killed worker."""


# ------------------------------------------------------------------------------------------ prompt pruning


def test_static_system_prompt_and_single_tool_set_are_pruned(records: list[CallRecord], tmp_path: Path) -> None:
    spec = derive_prompt_spec(records, PruningSettings())
    assert spec is not None and spec.drop_system_prompt and spec.tools == "dropped"
    pruned = build_messages(records[0], spec)
    assert pruned == [{"role": "system", "content": ""}, {"role": "user", "content": "What is the weather in Paris?"}]
    assert spec_accepts(spec, records[0])
    other_prompt = records[0].model_copy(
        update={"messages": [ChatMessage(role="system", content="Be terse."), *records[0].messages[1:]]}
    )
    assert not spec_accepts(spec, other_prompt)
    assert not spec_accepts(spec, records[0].model_copy(update={"tools": []}))

    save_prompt_spec(spec, tmp_path)
    assert load_prompt_spec(tmp_path) == spec
    assert load_prompt_transform(tmp_path)(records[1]) == build_messages(records[1], spec)
    assert load_prompt_transform(tmp_path / "none")(records[1]) == build_messages(records[1])  # no spec: full prompt


def test_varying_tools_keep_signatures_and_small_clusters_keep_everything(records: list[CallRecord]) -> None:
    time_tool = {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    mixed = [
        r.model_copy(update={"tools": [WEATHER_TOOL, time_tool] if i % 2 else [WEATHER_TOOL]})
        for i, r in enumerate(records)
    ]
    spec = derive_prompt_spec(mixed, PruningSettings(tool_descriptions=False, only_called_tools=False))
    assert spec.drop_system_prompt and spec.tools == "bare_signatures"
    assert build_messages(mixed[1], spec)[0]["content"] == "get_weather(city)\nget_time()"
    # By default a tool the cluster is offered but never calls is not listed.
    called_only = derive_prompt_spec(mixed, PruningSettings(tool_descriptions=False))
    assert build_messages(mixed[1], called_only)[0]["content"] == "get_weather(city)"
    assert spec_accepts(spec, mixed[0]) and spec_accepts(spec, mixed[1])
    few = derive_prompt_spec(records[:2], PruningSettings())
    assert not few.drop_system_prompt and few.tools == "signatures"
    assert build_messages(records[0], few)[0]["content"] == (
        "You help travellers.\nget_weather(city) - Current weather in a city."
    )
    unpruned = derive_prompt_spec(records, PruningSettings(enabled=False))
    assert not unpruned.pruned and unpruned.answers == "tool_calls"  # it still says how the model answers
    assert build_messages(records[0], unpruned) == build_messages(records[0])  # the full prompt
    assert spec_accepts(unpruned, records[0].model_copy(update={"tools": []}))


def test_the_adapter_is_trained_and_served_on_the_pruned_prompt(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    pruned = finetune(tiny_model_dir, records, tiny_config(max_steps=1), tmp_path / "pruned")
    full = finetune(
        tiny_model_dir,
        records,
        tiny_config(max_steps=1, prompt_pruning=PruningSettings(enabled=False)),
        tmp_path / "full",
    )
    assert (Path(pruned.adapter_dir) / PROMPT_SPEC_FILE).exists() and pruned.prompt_spec["tools"] == "dropped"
    assert full.prompt_spec["pruned"] is False and load_prompt_spec(full.adapter_dir).answers == "tool_calls"
    assert pruned.mean_tokens_per_call < full.mean_tokens_per_call / 2
    assert 0 < pruned.trained_tokens < full.trained_tokens

    served = generate(*load_model(tiny_model_dir, adapter_dir=pruned.adapter_dir), records[:2], max_new_tokens=2)
    unpruned = generate(*load_model(tiny_model_dir, adapter_dir=full.adapter_dir), records[:2], max_new_tokens=2)
    assert all(p.prompt_tokens < f.prompt_tokens for p, f in zip(served, unpruned))

    # Every training answer is a call, so the spec asks for calls only, and for about the longest answer's length.
    spec = load_prompt_spec(pruned.adapter_dir)
    assert spec.answers == "tool_calls" and 20 < spec.max_answer_tokens < 100 and spec.max_tool_calls == 1
    capped = generate(*load_model(tiny_model_dir, adapter_dir=pruned.adapter_dir), records[:2], max_new_tokens=500)
    assert all(0 < g.completion_tokens <= spec.max_answer_tokens for g in capped)
    # The untrained model may fill the city with noise up to the budget, but it can only open a call.
    assert all(g.text.startswith('<tool_call>{"name": "get_weather", "arguments": {"city": "') for g in capped)


# ------------------------------------------------------------------------------------------ validation


def test_validation_split_is_seeded_and_skipped_for_tiny_clusters(records: list[CallRecord]) -> None:
    many = [r.model_copy(update={"record_id": f"{r.record_id}-{i}"}) for i in range(5) for r in records]  # 40
    train, validation = split_validation(many, 0.1, 4, 20, seed=1)
    assert (
        len(validation) == 4
        and len(train) == 36
        and not {r.record_id for r in train} & {r.record_id for r in validation}
    )
    assert split_validation(many, 0.1, 4, 20, seed=1)[1] == validation
    assert split_validation(many, 0.1, 4, 20, seed=2)[1] != validation
    assert split_validation(records, 0.1, 4, 20, seed=1) == (records, [])


@pytest.mark.parametrize("metric", ["eval_loss", "eval_mean_token_accuracy"])
def test_early_stopping_on_a_validation_score(
    metric: str, tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    from components.finetune.train import EarlyStopping

    # An improvement must exceed a huge threshold to count, so the second evaluation already runs out of patience.
    config = tiny_config(
        max_steps=6,
        eval_steps=1,
        min_records_for_validation=8,
        validation_fraction=0.25,
        min_validation_records=2,
        early_stopping=EarlyStopping(patience=1, threshold=1e9, metric=metric),
    )
    trainer = build_trainer(tiny_model_dir, records[:6], config, tmp_path / "checkpoints", records[6:])
    assert trainer.args.metric_for_best_model == metric
    assert trainer.args.greater_is_better is (metric == "eval_mean_token_accuracy")
    result = finetune(tiny_model_dir, records, config, tmp_path / "adapter")
    assert len(result.validation_record_ids) == 2 and result.n_train == 6
    assert result.stopped_early and result.steps == 2
    assert [step for step, _ in result.eval_loss_history] == [1, 2] and result.eval_loss is not None


# ------------------------------------------------------------------------------------------ resume and re-runs


def test_a_setting_added_later_at_its_old_behaviour_keeps_finished_runs_reusable() -> None:
    from components.finetune.train import EarlyStopping, training_settings

    assert "metric" not in training_settings(tiny_config())["early_stopping"]  # fingerprints from before it match
    changed = training_settings(tiny_config(early_stopping=EarlyStopping(metric="eval_mean_token_accuracy")))
    assert changed["early_stopping"]["metric"] == "eval_mean_token_accuracy"
    # precision: auto (the same settings on any hardware, like device: auto) leaves fingerprints as they were.
    assert "precision" not in training_settings(tiny_config())
    assert training_settings(tiny_config(precision="fp32"))["precision"] == "fp32"


def test_a_spent_time_budget_stops_training_keeps_the_adapter_and_the_next_run_resumes(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    config = tiny_config(max_steps=3, save_steps=1)
    output, checkpoints = tmp_path / "adapter", tmp_path / "checkpoints"
    now = [0.0]

    def one_minute_per_step(step: int, total: int, loss: float) -> None:
        now[0] += 60

    cut = finetune(
        tiny_model_dir,
        records,
        config,
        output,
        progress_callback=one_minute_per_step,
        checkpoint_dir=checkpoints,
        deadline=30.0,  # passed after step 1 (its log moves the clock): training stops at the end of step 2
        clock=lambda: now[0],
    )
    assert (cut.steps, cut.stopped_by_budget, cut.stopped_early) == (2, True, False)
    assert (output / "adapter_model.safetensors").exists()  # S6 and the router can use it as it is
    assert (checkpoints / "checkpoint-2").exists() and not (output / "fingerprint.json").exists()  # not finished

    resumed = finetune(tiny_model_dir, records, config, output, checkpoint_dir=checkpoints)
    assert (resumed.resumed_from_step, resumed.steps, resumed.stopped_by_budget) == (2, 3, False)
    assert not resumed.reused and not checkpoints.exists()
    assert finetune(tiny_model_dir, records, config, output, checkpoint_dir=checkpoints).reused


def test_killed_run_resumes_and_a_finished_run_is_not_repeated(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    config = tiny_config(max_steps=3, save_steps=1)
    output, checkpoints = tmp_path / "adapter", tmp_path / "checkpoints"

    def kill_at_step_2(step: int, total: int, loss: float) -> None:
        if step == 2:  # logged before step 2 is checkpointed
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(tiny_model_dir, records, config, output, progress_callback=kill_at_step_2, checkpoint_dir=checkpoints)
    assert (checkpoints / "checkpoint-1").exists() and not (output / "adapter_model.safetensors").exists()

    resumed = finetune(tiny_model_dir, records, config, output, checkpoint_dir=checkpoints)
    assert resumed.resumed_from_step == 1 and resumed.steps == 3 and not resumed.reused
    assert [step for step, _ in resumed.loss_history] == [1, 2, 3]
    assert not checkpoints.exists()  # a finished run keeps only its output

    weights = output / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    (output / PROMPT_SPEC_FILE).unlink()  # as an older release left it: no spec, or one without the call budget
    again = finetune(tiny_model_dir, records, config, output, checkpoint_dir=checkpoints)
    assert again.reused and again.fingerprint == resumed.fingerprint and weights.stat().st_mtime_ns == written
    assert load_prompt_spec(output).max_tool_calls == 1 == again.prompt_spec["max_tool_calls"]
    assert json.loads((output / "training_result.json").read_text())["prompt_spec"]["max_tool_calls"] == 1
    changed = finetune(
        tiny_model_dir, records, tiny_config(max_steps=1, learning_rate=5e-3), output, checkpoint_dir=checkpoints
    )
    assert not changed.reused and changed.fingerprint != resumed.fingerprint and weights.stat().st_mtime_ns != written
    assert json.loads((output / "fingerprint.json").read_text())["fingerprint"] == changed.fingerprint


# ------------------------------------------------------------------------------------------ devices and outputs


def test_a_checkpoint_a_kill_cut_mid_save_is_not_resumed_from(tmp_path: Path) -> None:
    checkpoints = tmp_path / "cluster_0"
    assert prepare_checkpoints(checkpoints, "run-a") is None  # a fresh run: nothing to resume
    for step in (2, 4, 10):
        (checkpoints / f"checkpoint-{step}").mkdir()
        (checkpoints / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"")
    for step in (2, 4):  # the save of step 10 was killed before its trainer state
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert prepare_checkpoints(checkpoints, "run-a") == str(checkpoints / "checkpoint-4")
    assert not (checkpoints / "checkpoint-10").exists()
    assert prepare_checkpoints(checkpoints, "run-b") is None and not (checkpoints / "checkpoint-4").exists()


def test_device_choice_without_cuda() -> None:
    device = detect_device(cuda_available=False, flags=set())
    assert (device.kind, device.dtype_name, device.precision) == ("cpu", "float32", "fp32")
    assert detect_device("cpu", cuda_available=False, flags=set()) == device
    # A CPU with native bf16 trains in bf16 mixed precision over fp32 weights.
    assert detect_device(cuda_available=False, flags={"avx512f", "avx512_bf16"}) == Device("cpu", "float32", "bf16")
    assert detect_device(cuda_available=False, precision="fp32", flags={"avx512_bf16"}).precision == "fp32"
    with pytest.raises(UnsupportedDeviceError, match="QLoRA .* needs a CUDA GPU"):
        detect_device(quantization="4bit", cuda_available=False)
    with pytest.raises(UnsupportedDeviceError, match="no CUDA GPU"):
        detect_device("cuda", cuda_available=False)


def test_device_choice_with_cuda() -> None:
    device = detect_device(cuda_available=True, bf16_supported=True)
    assert (device.kind, device.dtype_name, device.precision, device.on_cuda) == ("cuda", "bfloat16", "bf16", True)
    assert detect_device("cuda", cuda_available=True, bf16_supported=False) == Device("cuda", "float32", "fp32")
    assert detect_device(precision="fp32", cuda_available=True, bf16_supported=True) == Device("cuda", "float32")
    # Asking for the CPU wins over a visible GPU.
    assert detect_device("cpu", cuda_available=True, bf16_supported=True, flags=set()) == Device("cpu", "float32")
    with pytest.raises(ValueError, match="set finetune.lora.enabled"):
        detect_device(quantization="4bit", lora_enabled=False, cuda_available=True)


@pytest.mark.parametrize(
    ("requested", "on_cuda", "cuda_bf16", "flags", "expected"),
    [
        ("auto", False, False, {"avx512f", "avx512_bf16"}, "bf16"),  # AMD Zen 4+, Intel Cooper Lake+
        ("auto", False, False, {"amx_bf16", "amx_tile"}, "bf16"),  # Intel Sapphire Rapids+
        ("auto", False, False, {"avx512f", "avx2", "fma"}, "fp32"),  # AVX-512 without bf16: emulated, slower
        ("auto", False, False, set(), "fp32"),  # flags unknown (no /proc/cpuinfo)
        ("auto", True, True, set(), "bf16"),
        ("auto", True, False, {"avx512_bf16"}, "fp32"),  # on a GPU the GPU decides, not the CPU's flags
        ("fp32", False, False, {"avx512_bf16"}, "fp32"),
        ("fp32", True, True, set(), "fp32"),
        ("bf16", False, False, set(), "bf16"),  # asked for: kept (autocast runs, emulated)
    ],
)
def test_precision_resolution(requested: str, on_cuda: bool, cuda_bf16: bool, flags: set, expected: str) -> None:
    assert resolve_precision(requested, on_cuda=on_cuda, cuda_bf16=cuda_bf16, flags=flags) == expected


def test_precision_errors_and_cpu_flags(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDeviceError, match="does not support bfloat16"):
        resolve_precision("bf16", on_cuda=True, cuda_bf16=False, flags=set())
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        resolve_precision("fp16", on_cuda=False, cuda_bf16=False, flags=set())
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_finetune_refuses_qlora_without_cuda(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    # The step's own probe must see no GPU, whatever this machine has.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UnsupportedDeviceError, match="QLoRA"):
        finetune(tiny_model_dir, records, tiny_config(quantization="4bit"), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_per_cluster_overrides_merge_into_the_section() -> None:
    config = tiny_config(overrides={"3": {"learning_rate": 5e-4, "lora": {"r": 8}}})
    tuned = config_for_cluster(config, 3)
    assert tuned.learning_rate == 5e-4 and tuned.lora.r == 8 and tuned.lora.alpha == 8
    assert config_for_cluster(config, 4) == config
    with pytest.raises(ValueError, match="only change training settings"):
        config_for_cluster(tiny_config(overrides={"3": {"output_dir": "elsewhere"}}), 3)
    with pytest.raises(ValueError, match="learning_rat"):
        config_for_cluster(tiny_config(overrides={"3": {"learning_rat": 1.0}}), 3)


def test_merged_model_answers_like_base_plus_adapter(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    import torch

    result = finetune(tiny_model_dir, records, tiny_config(max_steps=1, merge_adapter=True), tmp_path / "adapter")
    assert result.merged_dir == str(tmp_path / "adapter" / "merged")
    adapted, tokenizer = load_model(tiny_model_dir, adapter_dir=result.adapter_dir)
    merged, _ = load_model(tiny_model_dir, adapter_dir=result.merged_dir)  # a whole model in place of an adapter
    assert load_prompt_spec(result.merged_dir) == load_prompt_spec(result.adapter_dir) is not None
    inputs = tokenizer(["What is the weather in Oslo?"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(adapted(**inputs).logits, merged(**inputs).logits, atol=1e-4)
