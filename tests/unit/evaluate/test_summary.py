import pytest

from components.evaluate.summary import CollectedCall, run_summary


def entry(cluster_id: int, promoted: bool, slm_cost_per_1k: float) -> dict:
    return {"cluster_id": cluster_id, "promoted": promoted, "cost_per_1k_calls": {"slm_finetuned": slm_cost_per_1k}}


def test_calls_at_parity_are_those_whose_request_lands_in_a_promoted_cluster():
    calls = [CollectedCall(f"r{i}", 0.002) for i in range(10)]
    request_clusters = {"r0": 0, "r1": 0, "r2": 0, "r3": 1, "r4": 1, "r5": -1}  # r6..r9: filtered by S2, no cluster
    summary = run_summary(calls, request_clusters, [entry(0, True, 0.5), entry(1, False, 0.5)])
    assert summary["calls_total"] == 10
    assert summary["calls_in_converted_clusters"] == 5
    assert summary["calls_at_parity"] == 3
    assert summary["share_at_parity"] == pytest.approx(0.3)
    assert summary["llm_cost_per_1k_calls"] == pytest.approx(2.0)
    # 3 calls at $0.0005, 7 at $0.002 -> $0.01550 for 10 calls
    assert summary["blended_cost_per_1k_calls"] == pytest.approx(1.55)
    assert summary["savings_share"] == pytest.approx(1 - 1.55 / 2.0)
    assert "30% of the agent's calls (3 of 10)" in summary["headline"]


def test_a_repeated_call_s2_kept_out_of_training_counts_where_its_copy_is_served():
    # r1 is the agent's second call of r0's content: S2 trained on r0 only, so only r0 has a cluster.
    calls = [CollectedCall("r0", 0.002, "same"), CollectedCall("r1", 0.002, "same"), CollectedCall("r2", 0.002, "x")]
    summary = run_summary(calls, {"r0": 0}, [entry(0, True, 0.5)])
    assert summary["calls_total"] == 3 and summary["calls_at_parity"] == 2
    assert summary["calls_in_converted_clusters"] == 2
    # 2 calls at $0.0005, 1 at $0.002 -> $0.003 for 3 calls
    assert summary["blended_cost_per_1k_calls"] == pytest.approx(1.0)
    # a call without a copy in a cluster stays with the LLM
    assert run_summary(calls, {"r2": 0}, [entry(0, True, 0.5)])["calls_at_parity"] == 1


def test_calls_of_unknown_cost_count_at_the_mean_known_cost():
    calls = [CollectedCall("a", 0.004), CollectedCall("b", None)]
    summary = run_summary(calls, {}, [])
    assert summary["llm_cost_per_1k_calls"] == pytest.approx(4.0)


def test_a_run_that_converts_nothing_says_so_with_the_reasons():
    calls = [CollectedCall("a", 0.001)]
    skipped = [{"cluster_id": 2, "reason": "every training call exceeds max_length 512"}]
    summary = run_summary(calls, {"a": 2}, [], not_converted=skipped)
    assert summary["calls_at_parity"] == 0 and summary["savings_share"] == 0.0
    assert summary["headline"].startswith("No task was converted")
    assert "max_length 512" in summary["headline"]


def test_the_summary_keeps_what_the_slm_costs_assume_and_the_report_says_it(tmp_path):
    from components.evaluate.evaluation import write_report
    from components.scoring.costs import cost_basis

    basis = cost_basis("transformers-eager", "cpu-8-cores", 0.4)
    calls = [CollectedCall("a", 0.002)]
    summary = run_summary(calls, {"a": 0}, [entry(0, True, 0.5)], slm_cost_basis=basis)
    assert summary["slm_cost_basis"] == basis and run_summary(calls, {}, [])["slm_cost_basis"] is None
    assert "cores" in basis["measured_on"]
    page = write_report([], tmp_path / "report.html", summary).read_text()
    assert "SLM cost: transformers-eager, measured on" in page and "billed as cpu-8-cores at $0.4/h" in page
