"""The data-parallel helper: partitions keep order and cover every item; outside Dask they run in-process."""

import pytest

from flows.steps import load_pipeline_config
from tasks.parallel import ExecutionConfig, map_partitions, on_dask_worker, split

from tests.unit.test_architecture import ROOT


@pytest.mark.parametrize("count,partitions", [(0, 3), (1, 3), (7, 3), (9, 3), (5, 1), (4, 9)])
def test_split_keeps_order_covers_every_item_and_balances(count, partitions):
    items = list(range(count))
    chunks = split(items, partitions)
    assert [item for chunk in chunks for item in chunk] == items
    assert len(chunks) == max(1, min(partitions, count))
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_map_partitions_outside_dask_runs_each_partition_here_in_order():
    assert not on_dask_worker()
    assert map_partitions(sum, list(range(10)), 3) == [0 + 1 + 2 + 3, 4 + 5 + 6, 7 + 8 + 9]


def test_execution_defaults_to_in_process_and_rejects_unknown_runners():
    assert load_pipeline_config(ROOT / "params.yaml").execution == ExecutionConfig()
    assert ExecutionConfig().task_runner == "thread"
    with pytest.raises(ValueError):
        ExecutionConfig(task_runner="ray")
    with pytest.raises(ValueError):
        ExecutionConfig(partitions=0)
