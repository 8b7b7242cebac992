"""The wall-clock budget S4 and S5 share: spent after its minutes, a deadline on its own clock, none without one."""

from components.core.budget import TimeBudget, conversion_order
from components.core.clusters import ClusterSummary


def test_a_budget_is_spent_at_its_deadline_and_names_the_setting_to_raise():
    now = [100.0]
    budget = TimeBudget(2, "S5", "finetune.time_budget_minutes", clock=lambda: now[0])
    assert budget.deadline == 220.0 and not budget.spent()
    now[0] = 220.0
    assert budget.spent() and "raise finetune.time_budget_minutes" in budget.reason
    unlimited = TimeBudget(None, "S4", "select.time_budget_minutes", clock=lambda: now[0])
    assert unlimited.deadline is None and not unlimited.spent()


def test_conversion_order_is_s3s_rank_then_id_for_clusters_without_one():
    clusters = [
        ClusterSummary(cluster_id=5, label="older run", size=30, convert=True),
        ClusterSummary(cluster_id=3, label="second", size=30, convert=True, conversion_rank=2),
        ClusterSummary(cluster_id=9, label="first", size=30, convert=True, conversion_rank=1),
        ClusterSummary(cluster_id=1, label="kept", size=30, convert=False, conversion_rank=None),
    ]
    assert [c.cluster_id for c in conversion_order(clusters)] == [9, 3, 5]
