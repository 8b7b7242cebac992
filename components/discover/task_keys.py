"""What makes a cluster one task: the answer's shape at fit time, and tasks a user pins by rule.

S3's first level groups calls by what was asked (request + offered tools, UMAP + HDBSCAN). On a long tail of
functions that level alone makes grab-bags: one dense region of "do something with a service" requests holding
dozens of unrelated functions. At fit time the log also holds the answer, so the second level splits every
first-level cluster by its members' **task key**:

- ``split_by: function`` (default): the called function's *family*, its name with the version segment dropped
  (``Movies_3_FindMovies`` -> ``Movies_FindMovies``; two versions of one service method are one task), several
  calls in one answer joined in call order; a text answer's key is ``text``.
- ``split_by: api``: the agent's **API** the answer drives, and its answer kind: tools the log offers together (the
  calls offering one and the other overlap by at least ``api_min_co_offer``, Jaccard) are one API, named by its
  first tool; a tool-call answer's key is its API (several APIs joined) with the agent's name, a text answer's key
  is ``text`` with the agent's name. Parts with the same key are merged across first-level clusters and the
  first-level outliers join them: a multi-turn agent's calls to one API are one task, whatever step of a turn
  they are (see :func:`api_of_tools`).
- ``split_by: answer_kind``: only ``tool_call`` vs ``text`` (text answers never share a cluster with tool calls).
- ``split_by: none``: no second level (the clusters are HDBSCAN's).

A split whose tasks the request alone does not reproduce (``min_reproducible_share``) gives way to
``fallback_split_by``: see :class:`TaskSettings`.

A part with fewer than ``min_task_calls`` calls becomes outliers (they stay with the LLM). Parts with the same
tool-call key in different first-level clusters are one task and are merged (``merge_same_task``); plain ``text``
parts are never merged across first-level clusters, since ``text`` names no task of its own (the ``api`` split's
``text@agent`` does: the agent's answers to its user). With ``rescue_outliers``, a
first-level outlier whose answer calls a function joins that function's task too: on a long tail the requests of
one function are often too few or too varied for a dense region, yet the answer says they are one task (whether
the request alone places them back is checked afterwards, see :mod:`components.discover.discovery`).

Pinned tasks (:class:`PinnedTask`) are defined by the user, by agent name, by the offered tool set or by the called
function; their calls are taken out of the automatic discovery and form one cluster per rule. The agent and tool
set rules are read from the request, so the router applies them as they are; a called-function rule can only be
learned (the request-only assignment of :mod:`components.discover.identity` places new calls by their neighbours).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Literal

import numpy as np
from pydantic import field_validator, model_validator

from components.core.config import StepConfig
from components.core.schema import CallRecord
from components.discover.clustering import OUTLIER

TEXT_KEY = "text"
TOOL_CALL_KEY = "tool_call"
# Versions as they appear in function names: SGD's Domain_3_Method, and _v2 / .v1 suffixes or segments.
_SGD_VERSION = re.compile(r"^([A-Za-z]+)_\d+_(\w+)$")
_VERSION_SEGMENT = re.compile(r"(?:[._]v?\d+)(?=$|[._])", re.IGNORECASE)


class TaskSettings(StepConfig):
    split_by: Literal["function", "api", "answer_kind", "none"] = "function"
    # A task the router cannot find from requests alone is no task for it. In a multi-turn agent the next call
    # depends on tool results the request-only assignment cannot foresee, so a split by the called function keeps
    # few members. When the split's request-only check keeps less than min_reproducible_share of the split
    # members, S3 tries the fallback_split_by splits in order and uses the first that keeps enough (else the one
    # that kept most), and says so in the report; [] (or null): never.
    # api first: a multi-turn agent's calls to one API, whatever step of a turn, are one task of a size to train and
    # decide on, and the same at any log volume (docs/benchmarks-discover.md, issue 29).
    fallback_split_by: list[Literal["api", "answer_kind", "none"]] = ["api", "answer_kind", "none"]
    min_reproducible_share: float = 0.75
    # split_by api: two tools are one API when the calls offering them overlap by at least this share (Jaccard).
    api_min_co_offer: float = 0.8
    # A split part smaller than this stays with the LLM (outliers). Small on purpose: a long tail's functions have
    # few calls each, and a small task is still one task; conversion has its own minimum (min_cluster_size_to_convert).
    min_task_calls: int = 5
    merge_same_task: bool = True
    rescue_outliers: bool = True  # first-level outliers join the task their called function names (with merging)

    @field_validator("fallback_split_by", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value


class PinnedTask(StepConfig):
    """A task the user knows: every call matching all of the given conditions belongs to it."""

    name: str
    agent: str | None = None
    tool_set: list[str] | None = None  # the offered tool names, as a set (order does not matter)
    function: str | None = None  # the called function (its family, see function_family)

    @model_validator(mode="after")
    def _one_condition_at_least(self) -> PinnedTask:
        if self.agent is None and self.tool_set is None and self.function is None:
            raise ValueError(f"pinned task '{self.name}': give at least one of agent, tool_set, function")
        return self

    @property
    def request_only(self) -> bool:
        """Whether a request alone (no answer yet) decides the rule."""
        return self.function is None

    def matches(self, record: CallRecord) -> bool:
        if self.agent is not None and record.agent != self.agent:
            return False
        if self.tool_set is not None and set(record.tool_names) != set(self.tool_set):
            return False
        if self.function is not None and function_family(self.function) not in called_families(record):
            return False
        return True


def function_family(name: str) -> str:
    """A function name without its version: ``Movies_3_FindMovies`` -> ``Movies_FindMovies``,
    ``weather_v2.get`` -> ``weather.get``; other names are kept as they are."""
    match = _SGD_VERSION.match(name)
    if match:
        return f"{match.group(1)}_{match.group(2)}"
    return _VERSION_SEGMENT.sub("", name) or name


def called_families(record: CallRecord) -> list[str]:
    return [function_family(call.name) for call in record.response.tool_calls]


def task_key(record: CallRecord, split_by: str) -> str:
    """The answer's shape that splits a cluster (see the module docstring); ``api`` needs the whole log:
    :func:`task_keys`."""
    if split_by == "api":
        raise ValueError("split_by api reads the APIs off the whole log: use task_keys(records, 'api', settings)")
    if split_by == "none":
        return ""
    families = called_families(record)
    if not families:
        return TEXT_KEY
    if split_by == "answer_kind":
        return TOOL_CALL_KEY
    return "+".join(dict.fromkeys(families))  # repeated calls of one function (parallel answers) are one task


def api_of_tools(records: list[CallRecord], min_co_offer: float) -> dict[str, str]:
    """Each offered tool's API, read from the log alone: two tools are one API when the sets of calls that offer
    them overlap by at least ``min_co_offer`` (Jaccard), and chains of such pairs too; an API is named by its first
    tool in sorted order. An agent offers an API's tools together (a class, an MCP server, a plug-in), so its tools
    share their offering calls, while two APIs are offered together only in some conversations."""
    from scipy import sparse

    names = sorted({name for record in records for name in record.tool_names if name})
    if not names:
        return {}
    column = {name: i for i, name in enumerate(names)}
    rows, columns = [], []
    for row, record in enumerate(records):
        for i in {column[name] for name in record.tool_names if name}:
            rows.append(row)
            columns.append(i)
    offered = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), (len(records), len(names)))
    both = (offered.T @ offered).tocoo()  # calls offering tool i and tool j
    counts = np.asarray(offered.sum(axis=0)).ravel()
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, shared in zip(both.row, both.col, both.data):
        if i < j and shared / (counts[i] + counts[j] - shared) >= min_co_offer:
            parent[max(root(i), root(j))] = min(root(i), root(j))
    return {name: names[root(i)] for i, name in enumerate(names)}


def api_key(record: CallRecord, api_of: dict[str, str]) -> str:
    """The ``api`` task key: the APIs the answer calls (a tool the log never offered is its own API), or ``text``,
    with the agent's name: ``cd@bot``, ``text@bot``."""
    apis = sorted({api_of.get(call.name, call.name) for call in record.response.tool_calls})
    return f"{'+'.join(apis) or TEXT_KEY}@{record.agent or ''}"


def task_keys(records: list[CallRecord], split_by: str, settings: TaskSettings) -> list[str]:
    """Every record's task key for ``split_by``; ``api`` reads the APIs off the whole log (:func:`api_of_tools`)."""
    if split_by == "api":
        api_of = api_of_tools(records, settings.api_min_co_offer)
        return [api_key(record, api_of) for record in records]
    return [task_key(record, split_by) for record in records]


def pinned_labels(records: list[CallRecord], pinned: list[PinnedTask]) -> list[int | None]:
    """Per record, the index of the first pinned task it matches, or None."""
    return [next((i for i, rule in enumerate(pinned) if rule.matches(r)), None) for r in records]


def split_by_task(labels: np.ndarray, keys: list[str], settings: TaskSettings) -> tuple[np.ndarray, dict[str, int]]:
    """First-level ``labels`` split by task key (see the module docstring): new labels (any numbering, ``-1``
    kept) and how many calls each reason sent to the outliers."""
    labels = np.asarray(labels, dtype=int)
    if settings.split_by == "none" or not len(labels):
        return labels.copy(), {}
    parts: dict[tuple, list[int]] = defaultdict(list)
    for row, (label, key) in enumerate(zip(labels.tolist(), keys)):
        # Text parts keep their first-level cluster; tool-call parts of one key are one task when merging.
        merge = settings.merge_same_task and key not in (TEXT_KEY, TOOL_CALL_KEY)
        if label == OUTLIER and not (merge and settings.rescue_outliers):
            continue
        parts[(key,) if merge else (key, label)].append(row)
    result = np.full(len(labels), OUTLIER, dtype=int)
    # Every first-level member is in a part; what is not is a first-level outlier that was not rescued.
    reasons = {"first_level_outlier": len(labels) - sum(len(rows) for rows in parts.values())}
    dropped = 0
    for new_label, part in enumerate(sorted(parts, key=lambda p: (-len(parts[p]), p))):
        rows = parts[part]
        if len(rows) < settings.min_task_calls:
            dropped += len(rows)
            continue
        result[rows] = new_label
    reasons["task_smaller_than_min_task_calls"] = dropped
    return result, {reason: n for reason, n in reasons.items() if n}


def key_mix(keys: list[str]) -> tuple[str, float, int]:
    """The most common key, its share and the number of distinct keys (a cluster's answer mix)."""
    counts = Counter(keys)
    if not counts:
        return "", 0.0, 0
    top, count = counts.most_common(1)[0]
    return top, count / len(keys), len(counts)
