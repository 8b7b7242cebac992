"""Optional LLM-as-judge for free-text answers through any OpenAI-compatible chat completions endpoint."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from components.core.config import StepConfig

if TYPE_CHECKING:
    from components.scoring.metrics import Judge


class JudgeConfig(StepConfig):
    """LLM-as-judge for free-text clusters, through any OpenAI-compatible endpoint. Off by default."""

    enabled: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str | None = None  # the name of the environment variable holding the key, never the key
    timeout_s: float = 30.0


JUDGE_PROMPT = (
    "You grade an assistant's answer against a reference answer to the same request. Reply with one integer "
    "from 0 to 10: 10 means the answer says the same as the reference, 0 means it is wrong or unrelated.\n\n"
    "Reference:\n{reference}\n\nAnswer:\n{answer}\n\nGrade (0-10):"
)


def parse_grade(text: str) -> float:
    """The first integer 0..10 in the judge's reply, scaled to [0, 1]; 0.0 when there is none."""
    match = re.search(r"\b(10|[0-9])\b", text)
    return int(match.group(1)) / 10 if match else 0.0


def make_judge(cfg: JudgeConfig) -> Judge | None:
    """A (reference, answer) -> score function, or None when the judge is off. The API key is read from the
    environment variable ``cfg.api_key_env`` names, so it never sits in params or logs."""
    if not cfg.enabled:
        return None
    import httpx

    headers = {}
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ValueError(f"judge: environment variable {cfg.api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    client = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=cfg.timeout_s)

    def judge(reference: str, answer: str) -> float:
        response = client.post(
            "/chat/completions",
            json={
                "model": cfg.model,
                "temperature": 0,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": JUDGE_PROMPT.format(reference=reference, answer=answer)}],
            },
        )
        response.raise_for_status()
        return parse_grade(response.json()["choices"][0]["message"].get("content") or "")

    return judge
