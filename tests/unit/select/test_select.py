"""S4: constraints skip candidates with a reason; zero-/few-shot rows are scored, costed and the rule picks one."""

import json

import numpy as np
import pandas as pd
import pytest

from components.core.clusters import ClusterSummary, cluster_table_json
from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.scoring.labels import read_ground_truth
from components.select.benchmark import (
    Answer,
    Answers,
    SelectConfig,
    benchmark_candidates,
    choose,
    leaderboard_table,
    metrics_view,
    nearest_examples,
    with_examples,
)
from components.slm.catalog import Catalog, CatalogEntry

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(record_id: str, city: str) -> CallRecord:
    return CallRecord(
        record_id=record_id,
        messages=[ChatMessage(role="user", content=f"weather in {city}?")],
        tools=[WEATHER_TOOL],
        cost_usd=0.002,
        response=ChatMessage(
            role="assistant", tool_calls=[ToolCall(name="get_weather", arguments=json.dumps({"city": city}))]
        ),
    )


RECORDS = {f"r{i}": call(f"r{i}", city) for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima"])}
SPLITS = pd.DataFrame(
    {"record_id": list(RECORDS), "cluster_id": [0, 0, 0, 0], "split": ["train", "train", "test", "test"]}
)
CLUSTERS = [
    ClusterSummary(cluster_id=0, label="weather", size=4, output_kind="tool_call", convert=True),
    ClusterSummary(cluster_id=1, label="chit-chat", size=0, output_kind="text", convert=False),
]


def entry(name: str, licence: str = "MIT", parameters_m: float = 100, context: int = 8192) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        ref=f"ref-{name}",
        family="test",
        parameters_m=parameters_m,
        context_length=context,
        licence=licence,
        instruction_tuned=True,
        chat_template="builtin",
        tool_calling="prompted",
        memory_gb={"bf16": parameters_m / 500, "int4": parameters_m / 2000},
        available_offline=True,
        availability="test",
    )


def parse(text: str) -> ChatMessage:
    name, city = text.split(":")
    return ChatMessage(role="assistant", tool_calls=[ToolCall(name=name, arguments=json.dumps({"city": city}))])


PEAK_RSS_MB = {"weak": 110.0, "good": 220.0, "learner": 330.0, "broken": 0.0, "short": 0.0}
FEW_SHOT_EXTRA_MB = 5.0


def answerer(calls_seen: list, latency: dict | None = None, limits_seen: list | None = None):
    """'good' answers right zero-shot; 'learner' only when the prompt holds examples; others say Nowhere."""

    def answer(
        candidate: CatalogEntry, records: list[CallRecord], max_new_tokens: int, calls_only: bool, max_calls: int | None
    ) -> Answers:
        few_shot = any(m.role == "assistant" for m in records[0].messages)
        calls_seen.append((candidate.name, few_shot, [r.record_id for r in records]))
        if limits_seen is not None:
            limits_seen.append((max_new_tokens, calls_only, max_calls))
        if candidate.name == "broken":
            raise OSError("weights not found")
        right = candidate.name == "good" or (candidate.name == "learner" and few_shot)
        return Answers(
            [
                Answer(
                    f"get_weather:{r.user_request.split()[-1][:-1] if right else 'Nowhere'}",
                    (latency or {}).get(candidate.name, 10.0) * (2 if few_shot else 1),
                    5,
                )
                for r in records
            ],
            # Each candidate and mode reports its own memory, so a row showing another's is caught.
            peak_rss_mb=PEAK_RSS_MB[candidate.name] + (FEW_SHOT_EXTRA_MB if few_shot else 0.0),
        )

    return answer


def embed(texts):  # same first letter -> similar
    return np.array([[float(t.split()[-1][0] == c) for c in "PROL"] + [0.1] for t in texts])


def config(*names: str, **overrides) -> tuple[SelectConfig, Catalog]:
    catalog = Catalog(
        models=[
            entry("weak"),
            entry("good", "Apache-2.0", 300),
            entry("closed", "Proprietary", 50),
            entry("huge", parameters_m=70000),
            entry("broken", parameters_m=10),
            entry("learner", parameters_m=50),
            entry("short", context=16),
        ]
    )
    return SelectConfig(candidates=list(names), **overrides), catalog


def test_constraints_skip_with_reasons_and_the_best_candidate_wins():
    cfg, catalog = config("weak", "good", "closed", "huge", "broken", "short", modes=["zero_shot"])
    seen: list = []
    result = benchmark_candidates(RECORDS, CLUSTERS, SPLITS, cfg, catalog, answerer(seen), parse)
    status = {c["name"]: (c["status"], c["reason"]) for c in result.leaderboard["candidates"]}
    assert status["closed"][0] == "skipped" and "licence" in status["closed"][1]
    assert status["huge"][0] == "skipped" and "exceed" in status["huge"][1]
    assert status["broken"][0] == "skipped" and "weights not found" in status["broken"][1]
    assert status["short"][0] == "skipped" and "context of 16 tokens" in status["short"][1]
    # only held-out calls of the cluster marked for conversion are answered, only by admissible candidates
    assert seen == [("weak", False, ["r2", "r3"]), ("good", False, ["r2", "r3"]), ("broken", False, ["r2", "r3"])]
    [cluster] = result.leaderboard["clusters"]
    assert cluster["selected"] == "good" and cluster["selected_ref"] == "ref-good"
    assert cluster["finetune_needed"] is False and "cheapest" in cluster["reason"]
    assert {r["candidate"]: r["scores"]["full_call_match"] for r in cluster["results"]} == {"weak": 0.0, "good": 1.0}
    assert set(result.predictions.candidate) == {"weak", "good"} and len(result.predictions) == 4


def test_generation_is_sized_by_the_training_answers_and_calls_only_for_a_call_cluster():
    limits: list = []
    cfg, catalog = config("weak", modes=["zero_shot"])
    benchmark_candidates(RECORDS, CLUSTERS, SPLITS, cfg, catalog, answerer([], limits_seen=limits), parse)
    # One ~80-character call per training answer: a few dozen tokens, far under the 256-token cap.
    [(budget, calls_only, max_calls)] = limits
    assert calls_only and 20 < budget < 80 and max_calls == 1  # every training answer makes one call
    cfg, catalog = config("weak", modes=["zero_shot"], max_new_tokens=16)
    benchmark_candidates(RECORDS, CLUSTERS, SPLITS, cfg, catalog, answerer([], limits_seen=limits), parse)
    assert limits[-1] == (16, True, 1)


def test_few_shot_can_make_fine_tuning_unnecessary_and_costs_are_measured():
    cfg, catalog = config(
        "weak",
        "learner",
        hardware_prices_usd_per_hour={"box": 3.6},
        serving_hardware="box",
        modes=["zero_shot", "few_shot"],
    )
    result = benchmark_candidates(RECORDS, CLUSTERS, SPLITS, cfg, catalog, answerer([]), parse, embed=embed)
    [cluster] = result.leaderboard["clusters"]
    rows = {(r["candidate"], r["mode"]): r for r in cluster["results"]}
    assert set(rows) == {("weak", "zero_shot"), ("weak", "few_shot"), ("learner", "zero_shot"), ("learner", "few_shot")}
    assert rows[("learner", "few_shot")]["scores"]["full_call_match"] == 1.0
    assert rows[("learner", "zero_shot")]["scores"]["full_call_match"] == 0.0
    assert (cluster["selected"], cluster["selected_mode"], cluster["finetune_needed"]) == ("learner", "few_shot", False)
    few = rows[("learner", "few_shot")]
    # 20 ms per call at 3.6 USD/h = 0.00002 USD per call, 0.02 per 1k; LLM: 0.002 USD per call
    assert few["cost_per_1k_calls_usd"] == pytest.approx(0.02)
    assert cluster["llm_cost_per_1k_calls_usd"] == pytest.approx(2.0)
    assert few["latency_ms_p95"] == pytest.approx(20.0) and few["tokens_per_s"] == pytest.approx(250.0)
    assert {key: row["peak_rss_mb"] for key, row in rows.items()} == {
        ("weak", "zero_shot"): 110.0,
        ("weak", "few_shot"): 115.0,
        ("learner", "zero_shot"): 330.0,
        ("learner", "few_shot"): 335.0,
    }
    # S6 reuses only zero-shot answers; every mode's answers are kept beside them
    assert set(result.predictions.columns) == {"record_id", "cluster_id", "candidate", "text", "latency_ms"}
    assert len(result.predictions) == 4 and len(result.candidate_predictions) == 8
    table = leaderboard_table(result.leaderboard)
    assert len(table) == 4 and table.chosen.sum() == 1
    assert table.loc[table.chosen, "candidate"].item() == "learner"
    assert {"quality", "latency_ms_p50", "latency_ms_p95", "cost_per_1k_calls_usd", "pareto"} <= set(table.columns)
    assert metrics_view(result.leaderboard)["cluster_0"]["mode"] == "few_shot"


def test_without_a_candidate_at_the_floor_the_best_becomes_the_fine_tuning_base():
    rows = [
        {
            "candidate": "a",
            "mode": "zero_shot",
            "parameters_m": 100,
            "cost_per_1k_calls_usd": 0.1,
            "scores": {"m": 0.3},
        },
        {"candidate": "b", "mode": "zero_shot", "parameters_m": 50, "cost_per_1k_calls_usd": 0.1, "scores": {"m": 0.3}},
        {"candidate": "c", "mode": "few_shot", "parameters_m": 10, "cost_per_1k_calls_usd": 0.5, "scores": {"m": 0.2}},
    ]
    best, finetune_needed, reason = choose(rows, "m", floor=0.8)
    assert best["candidate"] == "b" and finetune_needed and "no candidate reaches" in reason
    cheapest, finetune_needed, _ = choose(rows, "m", floor=0.1)
    assert cheapest["candidate"] == "b" and not finetune_needed  # a and b cost the same: the smaller
    assert choose([], "m", 0.5)[0] is None


def test_few_shot_examples_are_the_nearest_training_calls_with_their_tools():
    train = [RECORDS["r0"], RECORDS["r1"]]  # Paris, Rome
    test = [call("t", "Pisa"), call("u", "Riga")]
    assert [[r.record_id for r in shots] for shots in nearest_examples(test, train, 1, embed)] == [["r0"], ["r1"]]
    prompt = with_examples(test[0], [RECORDS["r0"]])
    assert [m.role for m in prompt.messages] == ["user", "assistant", "user"]
    assert prompt.messages[1].tool_calls[0].arguments == '{"city": "Paris"}'
    assert prompt.messages[-1].content == "weather in Pisa?" and len(prompt.tools) == 1  # tools not repeated


def test_ground_truth_labels_score_the_llm_and_the_candidates(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps(
            {
                "record_id": "r2",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": ["Oslo", "Oslo, Norway"]}}],
            }
        )
        + "\n"
    )
    cfg, catalog = config("good", modes=["zero_shot"])
    result = benchmark_candidates(
        RECORDS, CLUSTERS, SPLITS, cfg, catalog, answerer([]), parse, ground_truth=read_ground_truth(labels)
    )
    [cluster] = result.leaderboard["clusters"]
    assert cluster["llm_ground_truth_scores"]["full_call_match"] == 1.0
    assert cluster["results"][0]["ground_truth_scores"]["n_labelled"] == 1
    labels.write_text('{"record_id": "r2"}\n')
    with pytest.raises(ValueError, match="labels.jsonl:1"):
        read_ground_truth(labels)


def test_config_needs_zero_shot_and_a_priced_machine():
    with pytest.raises(ValueError, match="zero_shot"):
        SelectConfig(modes=["few_shot"])
    with pytest.raises(ValueError, match="no price"):
        SelectConfig(serving_hardware="tpu")


def test_select_task_with_a_tiny_model_writes_the_leaderboard_files_and_mlflow_table(
    tiny_model_dir, records, tmp_path, monkeypatch
):
    """The real path: catalog file -> load -> batched generation -> scores, efficiency figures, files, MLflow."""
    import uuid

    import mlflow
    import yaml

    from components.core.schema import write_records
    from tasks.helpers.tracking import TrackingConfig
    from tasks.select import select_task

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny = entry("tiny").model_dump()
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"models": [{**tiny, "ref": tiny_model_dir}]}))
    write_records(records, tmp_path / "curated.parquet")
    (tmp_path / "clusters.json").write_text(json.dumps(cluster_table_json(CLUSTERS[:1])))
    ids = [r.record_id for r in records]
    pd.DataFrame({"record_id": ids, "cluster_id": 0, "split": ["train"] * 5 + ["test"] * 3}).to_parquet(
        tmp_path / "splits.parquet"
    )
    cfg = SelectConfig(
        curated="curated.parquet",
        clusters="clusters.json",
        splits="splits.parquet",
        catalog=str(tmp_path / "catalog.yaml"),
        candidates=["tiny"],
        modes=["zero_shot", "few_shot"],
        max_new_tokens=4,
    )
    tracking = TrackingConfig(experiment=f"select-{uuid.uuid4().hex[:8]}")
    leaderboard = select_task.fn(cfg, tmp_path, tracking)

    [cluster] = leaderboard["clusters"]
    assert {r["mode"] for r in cluster["results"]} == {"zero_shot", "few_shot"}
    for row in cluster["results"]:
        assert row["latency_ms_p95"] >= row["latency_ms_p50"] > 0 and row["peak_rss_mb"] > 0
        assert row["cost_per_1k_calls_usd"] > 0 and row["n_test"] == 3
    assert cluster["selected"] == "tiny" and cluster["reason"]
    # The costs above are the measured latencies of S4's engine, billed as the configured serving hardware.
    basis = leaderboard["cost_basis"]
    assert (basis["engine"], basis["hardware"], basis["hourly_cost_usd"]) == (
        "transformers-eager",
        cfg.serving_hardware,
        cfg.hourly_cost_usd,
    )
    table = pd.read_csv(tmp_path / "reports/leaderboard.csv")
    assert len(table) == 2 and table.chosen.sum() == 1
    assert json.loads((tmp_path / "reports/select_metrics.json").read_text())["cluster_0"]["selected"] == "tiny"
    assert len(pd.read_parquet(tmp_path / "data/predictions/slm_base.parquet")) == 3
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name(tracking.experiment).experiment_id])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"leaderboard.csv", "leaderboard_table.json", "leaderboard.json"} <= artifacts


def ranked_clusters_on_a_fake_clock(monkeypatch):
    """Cluster 2 (ranked first by S3, one training call) and cluster 0 (two); every benchmark takes five minutes
    of a fake clock. Returns the records, splits, clusters, the answered calls and the answerer."""
    import types

    import components.core.budget

    now = [0.0]
    monkeypatch.setattr(components.core.budget, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    records = {**RECORDS, **{f"s{i}": call(f"s{i}", city) for i, city in enumerate(["Kyiv", "Baku", "Riga"])}}
    splits = pd.concat(
        [SPLITS, pd.DataFrame({"record_id": ["s0", "s1", "s2"], "cluster_id": 2, "split": ["train", "test", "test"]})]
    )
    clusters = [
        ClusterSummary(cluster_id=0, label="weather", size=4, output_kind="tool_call", convert=True, conversion_rank=2),
        ClusterSummary(
            cluster_id=2, label="weather east", size=3, output_kind="tool_call", convert=True, conversion_rank=1
        ),
    ]
    seen: list = []
    answer = answerer(seen)

    def slow_answer(*args, **kwargs):
        now[0] += 300
        return answer(*args, **kwargs)

    slow_answer.restart = lambda: (now.__setitem__(0, 0.0), seen.clear())
    return records, splits, clusters, seen, slow_answer


def test_clusters_go_in_s3s_conversion_order_and_a_spent_time_budget_leaves_the_rest_with_the_reason(monkeypatch):
    records, splits, clusters, seen, slow_answer = ranked_clusters_on_a_fake_clock(monkeypatch)
    cfg, catalog = config("good", "weak", modes=["zero_shot"], time_budget_minutes=4)
    result = benchmark_candidates(records, clusters, splits, cfg, catalog, slow_answer, parse)
    first, second = result.leaderboard["clusters"]
    assert (first["cluster_id"], second["cluster_id"]) == (2, 0)  # rank 1 first, whatever the ids
    assert first["selected"] == "good" and len(first["results"]) == 1  # "weak" started after the budget was spent
    assert second["selected"] is None and second["results"] == []
    assert "S4 time budget (4 min) spent" in second["reason"] and "select.time_budget_minutes" in second["reason"]
    assert [ids for _, _, ids in seen] == [["s1", "s2"]]  # cluster 0's calls were never answered


def test_a_cluster_whose_calls_do_not_fit_s5s_window_is_benchmarked_last_and_says_why(monkeypatch):
    """S3 ranks cluster 2 first, but none of its training calls fit S5's window: cluster 0 gets the budget."""
    from components.slm.prompt_pruning import TrainingWindow

    records, splits, clusters, seen, slow_answer = ranked_clusters_on_a_fake_clock(monkeypatch)

    def count_trainable(train):  # cluster 2's calls ("s...") stand for calls too long for the window
        return sum(not r.record_id.startswith("s") for r in train)

    window = TrainingWindow(max_length=300)
    cfg, catalog = config("weak", modes=["zero_shot"], time_budget_minutes=4, training_window=window)
    result = benchmark_candidates(
        records, clusters, splits, cfg, catalog, slow_answer, parse, count_trainable=count_trainable
    )
    first, second = result.leaderboard["clusters"]
    assert (first["cluster_id"], first["trainable_calls"], first["n_train"]) == (0, 2, 2)
    assert [ids for _, _, ids in seen] == [["r2", "r3"]]  # the budget went to the cluster S5 can train
    assert (second["cluster_id"], second["trainable_calls"], second["results"]) == (2, 0, [])
    assert "S4 time budget" in second["reason"]
    assert "only 0 of its 1 training calls fit S5's window (finetune.max_length=300" in second["reason"]
    # Without S5's window known, S3's order stands.
    slow_answer.restart()
    cfg, _ = config("weak", modes=["zero_shot"], time_budget_minutes=4)
    result = benchmark_candidates(
        records, clusters, splits, cfg, catalog, slow_answer, parse, count_trainable=count_trainable
    )
    assert [c["cluster_id"] for c in result.leaderboard["clusters"]] == [2, 0]
