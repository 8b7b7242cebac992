"""The registry's champions as the SLM server's adapters: a resolver the embedded server polls for hot reloads.

Each served cluster's registered model (``<prefix>-cluster-<id>``) is asked which version its ``champion`` alias
points at; a version not seen before is downloaded once into its own folder (``<download_dir>/<name>/v<version>``,
so a folder's content never changes under the pool that loaded it). When the gate promotes or ``llm2slm rollback``
moves the alias, the next poll returns the other folder and the server switches to it without a restart.

A cluster with no champion (never registered, or the registry unreachable) keeps what it served last, else the
adapter of reports/router.yaml: an outage of the registry never takes a cluster's adapter away.

``llm2slm export`` asks once (:func:`champion_or_router_adapter`): it falls back to router.yaml's adapter only when
there is no registry or no champion for the cluster; any other registry error is raised (:class:`RegistryError`),
since router.yaml's adapter may be a version the registry has rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from components.core.clusters import registered_name
from components.evaluate.promotion_log import append_promotion_events, rollback_event
from components.serve.slm_server import Resolve, ServedAdapter
from tasks.helpers.registry import adapter_of_version, champion_version, rollback


class RegistryError(RuntimeError):
    """The registry exists but its champion could not be read or downloaded."""


def _download(name: str, version: str, download_dir: Path) -> ServedAdapter:
    folder, base_model = adapter_of_version(name, version, download_dir / name / f"v{version}")
    return ServedAdapter(base_model, folder)


def champion_or_router_adapter(
    workdir: Path, cluster_id: int, router_adapter: ServedAdapter, prefix: str, download_dir: Path
) -> tuple[ServedAdapter, str | None]:
    """(what a cluster serves now: its champion's adapter, downloaded, else ``router_adapter``; why it fell back,
    or None). Falls back only when the work dir has no registry or the registry has no champion for the cluster;
    raises :class:`RegistryError` on any other failure (unreadable store, server down, download failed)."""
    from tasks.helpers.tracking import use_existing_registry

    uri = use_existing_registry(workdir)
    if uri is None:
        return router_adapter, f"no registry ({workdir / 'mlflow.db'} does not exist): the router config's adapter"
    name = registered_name(prefix, cluster_id)
    try:
        version = champion_version(name)
        if version is None:
            return router_adapter, f"no champion registered for {name}: the router config's adapter"
        return _download(name, version, download_dir), None
    except Exception as error:  # noqa: BLE001 - any failure here must stop the caller, named
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise RegistryError(
            f"reading the champion of {name} from the registry ({uri}) failed: {type(error).__name__}: {reason}. "
            "Not falling back to the router config's adapter: it may be a version the registry has rolled back"
        ) from error


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
                downloaded[(name, version)] = _download(name, version, download_dir)
            resolved[cluster_id] = last[cluster_id] = downloaded[(name, version)]
        return resolved

    return resolve


def rollback_champion(name: str, cluster_id: int, promotions_log: Path) -> tuple[str, str]:
    """Move the cluster's ``champion`` back to its previous version and record it in the promotions log:
    (the version rolled back, the version restored). A cluster without an earlier champion raises ValueError."""
    rolled_back, restored = rollback(name)
    append_promotion_events(promotions_log, [rollback_event(cluster_id, name, rolled_back, restored)])
    return rolled_back, restored
