"""Stage locks (`llm2slm run --resume`): a step is skipped only while its params, inputs and outputs are unchanged."""

from pathlib import Path

import pytest

from components.collect.ingest import CollectConfig
from components.core.stage_lock import StageLock, file_digest
from components.finetune.train import FinetuneConfig
from flows.steps import STEP_CONFIGS, STEP_FILES, step_lock


@pytest.fixture
def step(tmp_path: Path):
    (tmp_path / "in.txt").write_text("calls")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text("{}")
    (tmp_path / "summary.json").write_text('{"records": 1}')

    def lock(params=None, inputs=(tmp_path / "in.txt",)) -> StageLock:
        return StageLock(
            "s", tmp_path, params or {"max_steps": 2}, inputs, (tmp_path / "out", tmp_path / "summary.json")
        )

    return tmp_path, lock


def test_unchanged_step_is_up_to_date_and_survives_a_copy_of_the_workdir(step, tmp_path_factory):
    root, lock = step
    assert lock().why_stale() == "no lock from a finished run"
    lock().record()
    assert lock().up_to_date()
    copy = tmp_path_factory.mktemp("copy")
    for path in root.rglob("*"):  # paths are recorded relative to the work dir
        target = copy / path.relative_to(root)
        target.mkdir(exist_ok=True) if path.is_dir() else target.write_bytes(path.read_bytes())
    assert StageLock(
        "s", copy, {"max_steps": 2}, (copy / "in.txt",), (copy / "out", copy / "summary.json")
    ).up_to_date()


def test_changed_param_reruns(step):
    _, lock = step
    lock().record()
    assert lock({"max_steps": 3}).why_stale() == "params changed"


def test_changed_input_reruns(step):
    root, lock = step
    lock().record()
    (root / "in.txt").write_text("more calls")
    assert lock().why_stale() == "input changed: in.txt"


def test_deleted_or_edited_output_reruns(step):
    root, lock = step
    lock().record()
    (root / "summary.json").unlink()
    assert lock().why_stale() == "output missing: summary.json"
    lock().record()
    (root / "out" / "b.json").write_text("[]")  # a file added to an output folder changes it
    assert lock().why_stale() == "output changed: out"


def test_an_undigestible_input_is_never_up_to_date_and_invalidate_forgets(step):
    root, lock = step
    lock().record()
    assert lock(inputs=None).why_stale() == "an input has no file to digest"
    assert lock(inputs=None).record() is None and not lock().path.exists()
    lock().record()
    lock().invalidate()
    assert not lock().up_to_date()


def test_folder_digest_depends_on_names_and_contents(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    first = file_digest(tmp_path / "d")
    (tmp_path / "d" / "x").rename(tmp_path / "d" / "y")
    assert file_digest(tmp_path / "d") != first
    assert file_digest(tmp_path / "missing") is None


def test_every_step_names_real_fields_and_s1_locks_its_sources(tmp_path):
    for name, (inputs, outputs) in STEP_FILES.items():
        assert set(inputs) | set(outputs) <= set(STEP_CONFIGS[name].model_fields), name
    log = tmp_path / "log.jsonl"
    log.write_text("{}\n")
    lock = step_lock("collect", CollectConfig(), tmp_path, log)
    assert lock.inputs == (log.resolve(),) and lock.current()["inputs"] == {"log.jsonl": file_digest(log)}
    mlflow_source = CollectConfig(sources=["mlflow:http://127.0.0.1:5000#agent"])
    assert step_lock("collect", mlflow_source, tmp_path).why_stale() == "an input has no file to digest"
    assert (
        step_lock("finetune", FinetuneConfig(), tmp_path).current()["params_sha256"]
        != step_lock("finetune", FinetuneConfig(max_steps=99), tmp_path).current()["params_sha256"]
    )


def test_run_step_runs_records_and_under_resume_skips_what_is_up_to_date(tmp_path):
    from flows.llm_to_slm import run_step

    cfg = FinetuneConfig()
    for name in (cfg.curated, cfg.splits, cfg.leaderboard):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    runs: list[int] = []

    def train() -> str:
        runs.append(1)
        (tmp_path / cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (tmp_path / cfg.summary).write_text("{}")
        return "trained"

    skipped: list[str] = []
    assert run_step("finetune", cfg, tmp_path, False, skipped, train) == "trained"  # resume off: always runs
    assert run_step("finetune", cfg, tmp_path, False, skipped, train) == "trained" and len(runs) == 2
    assert run_step("finetune", cfg, tmp_path, True, skipped, train) is None and skipped == ["finetune"]
    (tmp_path / cfg.leaderboard).write_text("another pick")
    assert run_step("finetune", cfg, tmp_path, True, skipped, train) == "trained" and len(runs) == 3

    def killed() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_step("finetune", cfg, tmp_path, False, skipped, killed)
    assert run_step("finetune", cfg, tmp_path, True, [], train) == "trained"  # a step stopped half-way reruns
