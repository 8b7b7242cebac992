"""The registry's champions as the SLM server's adapters: a resolver the embedded server polls for hot reloads.

Each served cluster's registered model (``<prefix>-cluster-<id>``) is asked which version its ``champion`` alias
points at; a version not seen before is downloaded once into its own folder (``<download_dir>/<name>/v<version>``,
so a folder's content never changes under the pool that loaded it). When the gate promotes or ``llm2slm rollback``
moves the alias, the next poll returns the other folder and the server switches to it without a restart.

A cluster with no champion (never registered, or the registry unreachable) keeps what it served last, else the
adapter of reports/router.yaml: an outage of the registry never takes a cluster's adapter away.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from components.core.clusters import registered_name
from components.serve.slm_server import Resolve, ServedAdapter
from tasks.helpers.registry import adapter_of_version, champion_version


def champion_resolver(clusters: Mapping[int, ServedAdapter], prefix: str, download_dir: Path) -> Resolve:
    """cluster id -> its champion's adapter (``clusters`` gives what each serves without one)."""
    downloaded: dict[tuple[str, str], ServedAdapter] = {}
    last: dict[int, ServedAdapter] = {}

    def resolve() -> dict[int, ServedAdapter]:
        resolved = {}
        for cluster_id, without_champion in clusters.items():
            name = registered_name(prefix, cluster_id)
            version = champion_version(name)
            if version is None:
                resolved[cluster_id] = last.get(cluster_id, without_champion)
                continue
            if (name, version) not in downloaded:
                folder, base_model = adapter_of_version(name, version, download_dir / name / f"v{version}")
                downloaded[(name, version)] = ServedAdapter(base_model, folder)
            resolved[cluster_id] = last[cluster_id] = downloaded[(name, version)]
        return resolved

    return resolve
