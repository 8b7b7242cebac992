"""The e2e tier's one real conversion: `llm2slm run` on a small slice of the demo agent log, with the real SmolLM2
(the catalog's default) and a few LoRA steps, under Prefect's test harness; run once per session and shared."""

import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.collect.demo_data import DemoDataConfig, build_demo_calls
from components.core.config import load_params

ROOT = Path(__file__).resolve().parents[2]


def small_params(tmp_path: Path) -> Path:
    """The real params, shrunk so the run takes a few minutes on 2 CPU cores."""
    params = load_params(ROOT / "params.yaml")
    params["demo_data"].update(kind="agent", conversations=40, malformed_lines=5, pii_share=0.3)
    params["discover"].update(
        min_cluster_size_to_convert=8,
        max_clusters_to_convert=1,
        max_test_per_cluster=4,
        hdbscan={"min_cluster_size": 8, "min_samples": 3},
    )
    # Whichever cluster S3 puts first must train: a travel cluster's compact prompts with one earlier turn run to
    # ~760 tokens (median), over the default 512, and S5 then trains nothing. Batch 2 keeps the 3 steps short.
    params["finetune"].update(max_steps=3, max_length=1024, per_device_train_batch_size=2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def conversion(tmp_path_factory):
    """One real `llm2slm run` per test session, shared by every e2e module (test_run.py checks the run itself,
    test_serve_real_run.py serves and exports what it made)."""
    import prefect.settings as settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli import app

    tmp_path = tmp_path_factory.mktemp("e2e")
    params_path = small_params(tmp_path)
    demo_cfg = DemoDataConfig(**load_params(params_path)["demo_data"])
    lines = build_demo_calls(demo_cfg)
    input_path = tmp_path / "agent-log.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    workdir = tmp_path / "work"
    experiment = f"e2e-{uuid.uuid4().hex[:8]}"
    prefect_home = tmp_path / "prefect-home"
    with (
        prefect_test_harness(server_startup_timeout=180),
        settings.temporary_settings(
            updates={settings.PREFECT_HOME: prefect_home, settings.PREFECT_LOCAL_STORAGE_PATH: prefect_home / "storage"}
        ),
    ):
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--input",
                str(input_path),
                "--workdir",
                str(workdir),
                "--params",
                str(params_path),
                "--experiment",
                experiment,
            ],
        )
        database = Path(settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
        # The harness deletes its SQLite file on exit: keep a copy for the leak scan.
        prefect_db = tmp_path / "prefect-db-copy"
        prefect_db.mkdir()
        for path in database.parent.glob(database.name + "*"):
            (prefect_db / path.name).write_bytes(path.read_bytes())
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return {
        "prefect_home": prefect_home,
        "prefect_db": prefect_db,
        "workdir": workdir,
        "params": params_path,
        "output": result.output,
        "experiment": experiment,
        "lines": lines,
        "malformed": demo_cfg.malformed_lines,
        # chat lines logged up to a tool result: their earlier calls are kept, the unanswered tail quarantined
        "truncated": round(demo_cfg.truncated_share * round(demo_cfg.chat_form_share * demo_cfg.conversations)),
    }
