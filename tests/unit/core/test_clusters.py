"""S3's cluster table as a typed model: a real-shaped row survives the write and the read, a wrong one is named."""

import json

import pytest

from components.core.clusters import ClusterSummary, cluster_table_json, read_cluster_table

# One row as S3 writes it (a demo run's clusters.json), every field described and scored.
ROW = {
    "cluster_id": 0,
    "label": "file_name / dir_name / source (cd)",
    "top_terms": ["file_name", "dir_name", "source", "folder", "cd", "lines"],
    "dominant_tools": ["cd", "cat", "echo"],
    "size": 127,
    "output_kind": "tool_call",
    "tool_call_share": 1.0,
    "homogeneity": 0.6977,
    "dominant_task": "cd",
    "dominant_task_share": 0.1575,
    "task_share": 1.0,
    "distinct_tasks": 28,
    "pinned": None,
    "llm_cost_usd": 1.091445,
    "convert": True,
    "conversion_rank": 2,
    "representative_record_ids": ["conv-23749376092b0bf3#m2", "req-7ac27a62c6693ed6"],
    "examples": [
        {
            "record_id": "conv-23749376092b0bf3#m2",
            "request": "Find FinalReport.txt.",
            "answer": 'cd({"folder": "Docs"})',
        },
        {"record_id": "req-7ac27a62c6693ed6", "request": "List the hidden files.", "answer": 'ls({"a": true})'},
    ],
    "calls_per_day": 18.441,
    "structured_output_share": 1.0,
    "cost_share": 0.1622,
    "answer_consistency": 0.1575,
    "fitness": 0.6284,
    "fitness_parts": {"volume": 0.4295, "homogeneity": 0.6977, "structure": 1.0, "cost": None, "consistency": 0.1575},
    "candidate": True,
    "candidate_failures": [],
    "decidable": True,
}


def test_a_real_row_round_trips_through_the_write_and_the_read(tmp_path):
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps([ROW]))
    [cluster] = read_cluster_table(path)
    assert (cluster.cluster_id, cluster.size, cluster.convert, cluster.conversion_rank) == (0, 127, True, 2)
    assert cluster.examples[1].answer == 'ls({"a": true})' and cluster.fitness_parts["cost"] is None
    written = cluster_table_json([cluster])
    assert written == [ROW]  # every field back, a None too
    path.write_text(json.dumps(written))
    assert read_cluster_table(path) == [cluster]


def test_a_row_of_an_older_run_without_the_fitness_fields_reads_with_their_defaults(tmp_path):
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps([{"cluster_id": 3, "label": "weather", "size": 40, "output_kind": "tool_call"}]))
    [cluster] = read_cluster_table(path)
    assert not cluster.convert and cluster.conversion_rank is None and cluster.task_share is None
    assert cluster.candidate_failures == [] and cluster.examples == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"size": "many"}, "size"),  # a wrong type
        ({"colour": "blue"}, "colour"),  # an unknown key (a typo of a field would read the same)
        ({"output_kind": "json"}, "output_kind"),  # not one of the answer kinds
    ],
)
def test_a_wrong_row_is_an_error_naming_the_file_and_the_field(tmp_path, change, field):
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps([ROW, {**ROW, "cluster_id": 1, **change}]))
    with pytest.raises(ValueError, match="not a cluster table") as error:
        read_cluster_table(path)
    assert str(path) in str(error.value) and f"row 1.{field}" in str(error.value)


def test_a_row_without_a_required_field_is_named_too(tmp_path):
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps([{"cluster_id": 0, "label": "weather"}]))
    with pytest.raises(ValueError, match=r"row 0\.size: Field required"):
        read_cluster_table(path)
    with pytest.raises(ValueError, match="cluster_id"):
        ClusterSummary(label="weather", size=3)
