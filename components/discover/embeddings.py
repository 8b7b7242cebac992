"""What a call's task is, as text and as a vector: the task text template, the embedding model and its cache.

A call's task is defined by three things the agent sends: the system prompt (which sub-agent or role), the tool set
(which actions are possible) and the user request (what is asked now). :func:`task_text` renders them through a
configurable template; :func:`embed_cached` embeds the texts with any sentence-transformers model and keeps every
vector in an on-disk cache keyed by ``sha256(model reference + text)``, so a re-run, a refit or the S6 refresh never
embeds the same text twice with the same model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import field_validator

from components.core.assets import resolve_model_ref
from components.core.config import StepConfig
from components.core.schema import CallRecord, tool_function

DEFAULT_TEMPLATE = "System: {system}\nTools: {tools}\nRequest: {request}\nProgress: {progress}"
_PLACEHOLDERS = {"system", "tools", "request", "progress"}
_FIELD = re.compile(r"\{(\w+)\}")
_KEY_BYTES = 64  # hex sha256


class TextSettings(StepConfig):
    """How a call becomes its task text and its task embedding.

    ``combine: weighted`` (default) embeds the three parts separately and takes the unit-length weighted sum
    ``w_system * e(system) + w_tools * e(tools) + w_request * e(request)`` (an empty part adds nothing). Each part
    gets the model's whole input window (MiniLM reads 256 tokens: one long shared system prompt and a tool list
    would push the request out of a joint text), a prompt shared by every call cannot drown the request, and the
    few distinct system prompts and tool sets are embedded once each (cache). ``combine: template`` embeds the
    rendered ``template`` as one text instead.

    ``template`` is rendered line by line with ``{system}``, ``{tools}`` and ``{request}``; a line whose
    placeholders are all empty is left out (a call without tools has no ``Tools:`` line). It is the text c-TF-IDF
    labels are computed from in both modes. ``tool_signature``: ``names`` (``get_weather``), ``parameters``
    (``get_weather(city, unit)``) or ``typed`` (``get_weather(city: string, unit: string)``).
    ``max_request_chars`` cuts very long requests: the task shows in their beginning.

    ``progress`` is what the agent did since the user's last message (an agent step after a tool result): the calls
    it made, each as ``name(arguments)`` with its result cut to ``max_progress_result_chars``. Every step of one
    user turn shares that turn's request; the progress is what tells the first call from the next one and from the
    closing answer. Empty for a call straight after the user's message (every single-call log).
    """

    combine: Literal["weighted", "template"] = "weighted"
    weights: dict[str, float] = {"system": 0.3, "tools": 1.0, "request": 1.0, "progress": 3.0}
    template: str = DEFAULT_TEMPLATE
    tool_signature: Literal["names", "parameters", "typed"] = "parameters"
    max_request_chars: int = 2000
    max_progress_result_chars: int = 80

    @field_validator("weights")
    @classmethod
    def _known_parts(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - _PLACEHOLDERS
        if unknown:
            raise ValueError(f"text weights: unknown part(s) {sorted(unknown)}; the parts are {sorted(_PLACEHOLDERS)}")
        return value


def tool_signature(tool: dict, style: str) -> str:
    function = tool_function(tool)
    name = str(function.get("name", ""))
    if style == "names":
        return name
    properties = (function.get("parameters") or {}).get("properties") or {}
    if style == "typed":
        parts = [
            f"{param}: {spec.get('type', 'any') if isinstance(spec, dict) else 'any'}"
            for param, spec in properties.items()
        ]
    else:
        parts = list(properties)
    return f"{name}({', '.join(parts)})"


def turn_progress(record: CallRecord, max_result_chars: int) -> str:
    """The calls made since the last user message, ``name(arguments) -> result``, one per line ("" if none)."""
    after_user = []
    for message in reversed(record.messages):
        if message.role == "user":
            break
        after_user.append(message)
    results = {m.tool_call_id: (m.content or "") for m in after_user if m.role == "tool"}
    lines = []
    for message in reversed(after_user):
        for call in message.tool_calls if message.role == "assistant" else []:
            result = " ".join(results.get(call.id, "").split())[:max_result_chars]
            lines.append(f"{call.name}({call.arguments}) -> {result}")
    return "\n".join(lines)


def task_parts(record: CallRecord, settings: TextSettings) -> dict[str, str]:
    """The parts that define a call's task: ``system``, ``tools`` (signatures), ``request`` and ``progress``."""
    return {
        "system": record.system_prompt.strip(),
        "tools": "; ".join(tool_signature(tool, settings.tool_signature) for tool in record.tools),
        "request": record.user_request.strip()[: settings.max_request_chars],
        "progress": turn_progress(record, settings.max_progress_result_chars)[: settings.max_request_chars],
    }


def task_text(record: CallRecord, settings: TextSettings | None = None) -> str:
    """The text that defines a call's task; with the default template, one section per line::

        System: <system prompt>
        Tools: get_weather(city, unit); book_flight(origin, destination)
        Request: <last user message>

    The response is left out on purpose: the task is what was asked, not what the LLM answered.
    """
    settings = settings or TextSettings()
    values = task_parts(record, settings)
    lines = []
    for line in settings.template.split("\n"):
        fields = set(_FIELD.findall(line))
        unknown = fields - _PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"task text template: unknown placeholder(s) {sorted(unknown)}; use {sorted(_PLACEHOLDERS)}"
            )
        if fields and not any(values[field] for field in fields):
            continue
        lines.append(_FIELD.sub(lambda match: values[match.group(1)], line))
    return "\n".join(lines)


def load_sentence_model(model_ref: str):
    """The sentence-transformers model on the CPU (a long-running caller, e.g. the router, keeps it)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_ref(model_ref), device="cpu")


def embed_texts(texts: list[str], model_ref: str, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Unit-length sentence embeddings (float32), one row per text, computed on the CPU."""
    return encode_texts(load_sentence_model(model_ref), texts, batch_size, show_progress)


def encode_texts(model, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """:func:`embed_texts` with an already loaded model."""
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=show_progress,
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    return np.asarray(vectors, dtype=np.float32)


def cache_key(model_ref: str, text: str) -> str:
    return hashlib.sha256(f"{model_ref}\n{text}".encode()).hexdigest()


class EmbeddingCache:
    """Vectors by content key in a folder of append-only shards (``shard-N.keys.npy`` + ``shard-N.vectors.npy``).

    Each :meth:`add` writes one new shard, so an interrupted write never corrupts what is there, and loading is two
    ``np.load`` per shard. The keys hash the model reference with the text, so models never mix.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        for keys_path in sorted(self.folder.glob("shard-*.keys.npy"), key=_shard_number):
            vectors_path = keys_path.with_name(keys_path.name.replace(".keys.", ".vectors."))
            if not vectors_path.exists():
                continue  # a shard whose vectors were never written: ignore it, its texts get embedded again
            keys = np.load(keys_path)
            vectors = np.load(vectors_path, mmap_mode="r")
            if len(keys) != len(vectors):
                continue
            shard = len(self._shards)
            self._shards.append(vectors)
            self._index.update({key.decode(): (shard, row) for row, key in enumerate(keys.tolist())})

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, keys: list[str]) -> np.ndarray:
        rows = [self._shards[shard][row] for shard, row in (self._index[key] for key in keys)]
        return np.asarray(rows, dtype=np.float32)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        new = {key: row for row, key in enumerate(keys) if key not in self._index}
        if not new:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        number = 1 + max((_shard_number(p) for p in self.folder.glob("shard-*.keys.npy")), default=-1)
        stacked = np.asarray(vectors, dtype=np.float32)[list(new.values())]
        # Vectors first, keys last: a shard counts only once its keys exist (see __init__).
        np.save(self.folder / f"shard-{number}.vectors.npy", stacked)
        np.save(self.folder / f"shard-{number}.keys.npy", np.array(list(new), dtype=f"S{_KEY_BYTES}"))
        shard = len(self._shards)
        self._shards.append(stacked)
        self._index.update({key: (shard, row) for row, key in enumerate(new)})


def _shard_number(path: Path) -> int:
    return int(path.name.split("-", 1)[1].split(".", 1)[0])


def embed_cached(
    texts: list[str],
    model_ref: str,
    cache_dir: Path | None,
    embed: Callable[[list[str], str], np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """Embeddings of ``texts`` (one row each) and how many had to be computed; the rest come from the cache.

    ``embed(texts, model_ref)`` does the computing (injectable for tests); without ``cache_dir`` nothing is kept.
    Identical texts are embedded once.
    """
    embed = embed or embed_texts
    if cache_dir is None:
        return embed(list(texts), model_ref), len(texts)
    cache = EmbeddingCache(cache_dir)
    keys = [cache_key(model_ref, text) for text in texts]
    missing = {key: text for key, text in zip(keys, texts) if key not in cache}
    if missing:
        cache.add(list(missing), embed(list(missing.values()), model_ref))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32), 0
    return cache.get(keys), len(missing)


def embed_tasks(
    records: list[CallRecord],
    model_ref: str,
    settings: TextSettings,
    cache_dir: Path | None,
    embed: Callable[[list[str], str], np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """The task embedding of each record (see :class:`TextSettings`) and how many texts had to be embedded now."""
    if settings.combine == "template" or not records:
        return embed_cached([task_text(record, settings) for record in records], model_ref, cache_dir, embed)
    parts = [task_parts(record, settings) for record in records]
    weighted = [(name, weight) for name, weight in settings.weights.items() if weight]
    # One embedding call for every distinct text of every part: shared prompts and tool sets cost one vector.
    texts = sorted({p[name] for p in parts for name, _ in weighted if p[name]})
    vectors, embedded_now = embed_cached(texts, model_ref, cache_dir, embed)
    if not texts:
        raise ValueError("no call has any text in the weighted parts: nothing to embed")
    row_of = {text: row for row, text in enumerate(texts)}
    combined = np.zeros((len(records), vectors.shape[1]), dtype=np.float32)
    for name, weight in weighted:
        present = [i for i, p in enumerate(parts) if p[name]]
        combined[present] += weight * vectors[[row_of[parts[i][name]] for i in present]]
    norms = np.linalg.norm(combined, axis=1, keepdims=True)
    return combined / np.maximum(norms, 1e-12), embedded_now
