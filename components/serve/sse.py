"""Server-sent events of chat completions: rebuilding a streamed completion from its raw bytes (what the proxy
records of a streamed call), and sending a whole completion as a one-chunk stream (a responder or the SLM server
answering a streaming request)."""

from __future__ import annotations

import codecs
import json
import logging
from typing import Any

from components.collect.sources.common import ChunkAccumulator, RecordError

logger = logging.getLogger(__name__)


class SSEAccumulator:
    """Rebuilds the final chat.completion from the raw SSE bytes of a streamed one."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._chunks = ChunkAccumulator()

    def feed(self, raw: bytes) -> None:
        # Chunks may split an event or a multi-byte character anywhere: decode incrementally, parse whole lines.
        self._pending += self._decoder.decode(raw)
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if not line.startswith("data:"):
                continue  # blank separators, comments, event/id fields
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                continue
            try:
                self._chunks.add(json.loads(payload))
            except (json.JSONDecodeError, RecordError):
                logger.warning("proxy: skipped an SSE data line that is not a chunk object")

    def response(self) -> dict[str, Any]:
        self.feed(b"\n")  # flush a last line the upstream did not terminate
        return self._chunks.response()


def completion_as_sse(completion: dict[str, Any]) -> bytes:
    """A whole completion as a one-chunk stream (for a responder answering a streaming request)."""
    base = {key: completion.get(key) for key in ("id", "created", "model")}
    choices = [
        {
            "index": choice.get("index", 0),
            "finish_reason": choice.get("finish_reason"),
            "delta": {
                **choice.get("message", {}),
                "tool_calls": [
                    {"index": i, **call} for i, call in enumerate(choice.get("message", {}).get("tool_calls") or [])
                ]
                or None,
            },
        }
        for choice in completion.get("choices", [])
    ]
    chunk = {**base, "object": "chat.completion.chunk", "choices": choices}
    if completion.get("usage"):
        chunk["usage"] = completion["usage"]
    return f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
