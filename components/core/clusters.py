"""What every step calls a cluster: the outlier id (calls that stay with the LLM) and a cluster's registered name."""

from __future__ import annotations

OUTLIER = -1  # S3's label for a call in no cluster: the LLM answers it


def registered_name(prefix: str, cluster_id: int) -> str:
    """The MLflow registered model of a cluster's SLM (its versions carry the champion/challenger aliases)."""
    return f"{prefix}-cluster-{cluster_id}"
