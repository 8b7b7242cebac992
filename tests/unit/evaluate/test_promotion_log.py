"""reports/promotions.jsonl: events appended one line each, across calls; a rollback's line names both versions."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import typer

from components.evaluate.promotion_log import append_promotion_events, rollback_event
from flows.cli_errors import exit_on


def test_events_are_appended_one_line_each_across_calls(tmp_path):
    log = tmp_path / "reports" / "promotions.jsonl"
    append_promotion_events(log, [{"refresh": 1, "cluster_id": 0, "promoted": True}])
    append_promotion_events(log, [rollback_event(0, "llm2slm-cluster-0", "3", "1")])
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first == {"refresh": 1, "cluster_id": 0, "promoted": True}
    assert {k: second[k] for k in ("event", "from_version", "version", "alias")} == {
        "event": "rollback",
        "from_version": "3",
        "version": "1",
        "alias": "champion",
    }
    assert datetime.fromisoformat(second["at"]).tzinfo is not None


def test_exit_on_turns_only_the_listed_errors_into_one_line_and_exit_code_2(capsys):
    @exit_on(KeyError, prefix="error: store: ")
    def fails(error: Exception) -> None:
        raise error

    with pytest.raises(typer.Exit) as stopped:
        fails(KeyError("no key"))
    assert stopped.value.exit_code == 2 and capsys.readouterr().err == "error: store: 'no key'\n"
    with pytest.raises(RuntimeError):  # not listed: a traceback, as before
        fails(RuntimeError("bug"))
