"""The data-parallel helper: partitions keep order and cover every item; outside Dask they run in-process."""

import pytest

from flows.steps import load_pipeline_config
from tasks.helpers.parallel import ExecutionConfig, map_partitions, on_dask_worker, split
from tests.support.imports import ROOT


@pytest.mark.parametrize("count,partitions", [(0, 3), (1, 3), (7, 3), (9, 3), (5, 1), (4, 9)])
def test_split_keeps_order_covers_every_item_and_balances(count, partitions):
    items = list(range(count))
    chunks = split(items, partitions)
    assert [item for chunk in chunks for item in chunk] == items
    assert len(chunks) == max(1, min(partitions, count))
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_map_partitions_outside_dask_runs_each_partition_here_in_order():
    import os
    import threading

    assert not on_dask_worker()
    calls: list[tuple[int, int, list[int]]] = []

    def summed_where_it_ran(chunk: list[int]) -> int:
        calls.append((os.getpid(), threading.get_ident(), chunk))
        return sum(chunk)

    assert map_partitions(summed_where_it_ran, list(range(10)), 3) == [0 + 1 + 2 + 3, 4 + 5 + 6, 7 + 8 + 9]
    # Each partition ran in this very process and thread, one after the other in partition order.
    here = (os.getpid(), threading.get_ident())
    assert calls == [(*here, [0, 1, 2, 3]), (*here, [4, 5, 6]), (*here, [7, 8, 9])]


def test_execution_defaults_to_in_process_and_rejects_unknown_runners():
    assert load_pipeline_config(ROOT / "params.yaml").execution == ExecutionConfig()
    assert ExecutionConfig().task_runner == "thread"
    with pytest.raises(ValueError):
        ExecutionConfig(task_runner="ray")
    with pytest.raises(ValueError):
        ExecutionConfig(partitions=0)


def test_partitioned_anonymization_equals_one_pass(monkeypatch, tmp_path):
    import components.curate.anonymize
    from components.core.schema import CallRecord, ChatMessage
    from components.curate.anonymize import AnonymizeConfig, Anonymizer, anonymize_records
    from tasks.anonymize import anonymize_partitioned

    cfg = AnonymizeConfig(input="in.parquet", output="out.parquet", audit="audit.json")
    # One spaCy load for the whole test: each partition would otherwise build its own (seconds each).
    shared = Anonymizer(cfg)
    monkeypatch.setattr(components.curate.anonymize, "Anonymizer", lambda _cfg, **_: shared)
    users = [
        "I am John Smith, mail john.smith@example.com",
        "Weather in Paris?",
        "Call Maria Garcia on 415 867 5309",
        "Nothing personal here",
        "Write to maria.garcia@corp.org",
    ]
    records = [
        CallRecord(
            record_id=f"r{i}",
            messages=[ChatMessage(role="user", content=text)],
            response=ChatMessage(role="assistant", content="ok"),
        )
        for i, text in enumerate(users)
    ]
    one_records, one_audit = anonymize_records(records, cfg)
    part_records, part_audit = anonymize_partitioned(records, cfg, partitions=2, workdir=tmp_path)
    assert part_records == one_records
    assert part_audit["partitions"] == 2
    timing = {"seconds", "records_per_second", "partitions"}
    assert {k: v for k, v in part_audit.items() if k not in timing} == {
        k: v for k, v in one_audit.items() if k not in timing
    }
    assert one_audit["records_with_pii"] >= 3
