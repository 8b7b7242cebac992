"""The registry side of the router's demotions: the router (components/serve/service.py) demotes a cluster whose
audited calls fell below parity and logs it in the promotions log; it lives below MLflow, so this task moves the
registry alias back and logs that it did (components/evaluate/demotion.py :func:`pending_demotions`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.core.clusters import registered_name
from components.evaluate.demotion import ALIAS_MOVED, pending_demotions, read_log
from components.evaluate.promotion_log import append_promotion_events
from tasks.helpers.progress import say
from tasks.helpers.registry import CHALLENGER, CHAMPION, champion_history, champion_version, rollback


def move_alias_back(name: str) -> dict[str, Any]:
    """The registry after a demotion: ``champion`` back to the previous champion when there is one (the demoted
    version becomes ``challenger``), else the ``champion`` alias removed (the version keeps ``challenger``); a
    cluster without a champion (a selective one) has nothing to move."""
    from mlflow.tracking import MlflowClient

    current = champion_version(name)
    if current is None:
        return {"alias_moved": False, "from_version": None, "to_version": None}
    if len(champion_history(name)) >= 2:
        demoted, restored = rollback(name)
        return {"alias_moved": True, "from_version": demoted, "to_version": restored}
    client = MlflowClient()
    client.delete_registered_model_alias(name, CHAMPION)
    client.set_registered_model_alias(name, CHALLENGER, current)
    client.set_model_version_tag(name, current, "demoted", "true")
    return {"alias_moved": True, "from_version": current, "to_version": None}


def apply_demotions(promotions_log: Path, registered_model_prefix: str) -> list[dict[str, Any]]:
    """Move the alias of each demotion no task applied yet, and log each move (``demotion_applied``) beside it."""
    applied = []
    for demotion in pending_demotions(read_log(promotions_log)):
        cluster_id = int(demotion["cluster_id"])
        moved = move_alias_back(registered_name(registered_model_prefix, cluster_id))
        line = {
            "event": ALIAS_MOVED,
            "timestamp": datetime.now(UTC).isoformat(),
            "cluster_id": cluster_id,
            "demotion_timestamp": demotion["timestamp"],
            **moved,
        }
        append_promotion_events(promotions_log, [line])
        applied.append(line)
        say(f"refresh: cluster #{cluster_id} demoted by the router: {demotion['reason']}; registry: {moved}")
    return applied


@task(name="refresh: apply demotions", cache_policy=NO_CACHE)
def apply_demotions_task(promotions_log: Path, registered_model_prefix: str) -> list[dict[str, Any]]:
    return apply_demotions(promotions_log, registered_model_prefix)
