"""S4's answerer (components/select/answering.py) with the model loading, generation and memory probe swapped for
recorders: each candidate is loaded once while it is in use, and its answers carry the peak memory sampled."""

from components.core.schema import CallRecord, ChatMessage
from components.select.answering import candidate_answerer
from components.slm.catalog import load_catalog
from components.slm.generation import Generation

RECORDS = [
    CallRecord(
        record_id=f"r{i}",
        messages=[ChatMessage(role="user", content=f"question {i}")],
        response=ChatMessage(role="assistant", content="answer"),
    )
    for i in range(3)
]


def test_each_candidate_is_loaded_once_while_in_use_and_reports_its_peak_memory():
    first, second = load_catalog(None).models[:2]
    loads, runs, progress = [], [], []
    memory = iter([100.0, 250.0, 80.0, 90.0, 95.0, 120.0, 10.0, 300.0])

    def fake_run(model, tokenizer, records, **options):
        runs.append((model, options))
        options["progress"](len(records), len(records))
        return [Generation(f"{model}:{r.record_id}", 12.5, 4, 2) for r in records]

    answer = candidate_answerer(
        batch_size=4,
        constrained_decoding=False,
        progress_for=lambda label, total: lambda done, _: progress.append((label, done, total)),
        load=lambda entry: loads.append(entry.name) or (f"model-{entry.name}", "tokenizer"),
        run=fake_run,
        memory_mb=lambda: next(memory),
    )

    zero_shot = answer(first, RECORDS, 64, calls_only=True, max_calls=2)
    few_shot = answer(first, RECORDS[:1], 32, calls_only=False)
    other = answer(second, RECORDS, 64, calls_only=False)
    again = answer(first, RECORDS, 64, calls_only=False)

    assert loads == [first.name, second.name, first.name]  # one in memory at a time, reloaded after a switch
    assert [a.text for a in zero_shot.answers] == [f"model-{first.name}:r{i}" for i in range(3)]
    assert zero_shot.answers[0].latency_ms == 12.5 and zero_shot.answers[0].completion_tokens == 2
    assert (zero_shot.peak_rss_mb, few_shot.peak_rss_mb, other.peak_rss_mb, again.peak_rss_mb) == (
        250.0,
        90.0,
        120.0,
        300.0,
    )
    options = runs[0][1]
    assert options["batch_size"] == 4 and options["max_new_tokens"] == 64 and not options["constrain_tool_calls"]
    assert options["require_tool_calls"] and options["max_tool_calls"] == 2
    assert not runs[1][1]["require_tool_calls"] and runs[1][1]["max_tool_calls"] is None
    assert progress[0] == (f"S4 {first.name}", 3, 3)
