"""The refresh flow three times on the embedded default (Prefect test harness, SQLite MLflow in the work dir):
a second batch that shifts the cluster mix is detected as drift and triggers retraining; a challenger trained
0 steps is not promoted, a better one later is; `llm2slm rollback` then moves `champion` back.

Real here: S1 collect, S2 curation + Presidio, S3 labelling/splitting with HDBSCAN, S4/S5/S6 task code, MLflow
runs, registry aliases and artifact download of the champion. Stand-ins, because the real thing is tested
elsewhere and is too slow for this loop: the sentence embeddings and UMAP (one-hot of the called tool instead;
S3 in tests/unit/test_discover.py), LoRA training and generation (a learner whose share of right answers is
max_steps / 10, stored in its adapter folder; the real S5 and generation in tests/unit/test_slm_finetune.py and
tests/e2e). Everything between those seams runs as in production.
"""

import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from components.finetune.train import FinetuneResult
from components.slm import render_target
from tests.support.tiny_models import build_tiny_model, write_tiny_catalog

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {
    "get_weather": (
        "city",
        [
            "Paris",
            "Berlin",
            "Tokyo",
            "Lima",
            "Oslo",
            "Cairo",
            "Quito",
            "Perth",
            "Rome",
            "Kyiv",
            "Dakar",
            "Hanoi",
            "Sofia",
            "Minsk",
            "Riga",
            "Bern",
            "Doha",
            "Male",
            "Suva",
            "Apia",
            "Baku",
            "Lome",
            "Nuuk",
            "Oran",
            "Pune",
            "Kobe",
            "Nice",
            "Bonn",
            "Graz",
            "Linz",
        ],
    ),
    "get_time": ("zone", [f"UTC+{i}" for i in range(30)]),
    "convert_currency": (
        "currency",
        [
            "EUR",
            "USD",
            "JPY",
            "GBP",
            "CHF",
            "CAD",
            "AUD",
            "NZD",
            "SEK",
            "NOK",
            "DKK",
            "PLN",
            "CZK",
            "HUF",
            "RON",
            "BGN",
            "TRY",
            "ZAR",
            "BRL",
            "MXN",
            "INR",
            "CNY",
            "KRW",
            "SGD",
            "HKD",
            "THB",
            "IDR",
            "MYR",
            "PHP",
            "ILS",
        ],
    ),
}
QUESTION = {
    "get_weather": "What is the weather like in {} today?",
    "get_time": "Which time is it now in zone {}?",
    "convert_currency": "Convert one hundred dollars into {} please.",
}


def call_line(batch: int, tool: str, index: int) -> str:
    argument, values = TOOLS[tool]
    value = values[index % len(values)]
    schema = {
        "type": "function",
        "function": {
            "name": tool,
            "description": f"{tool} tool.",
            "parameters": {"type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]},
        },
    }
    return json.dumps(
        {
            "id": f"b{batch}-{tool}-{index}",
            "agent": "travel",
            "request": {
                "model": "gpt-4o",
                "tools": [schema],
                "messages": [
                    {"role": "system", "content": "You are a travel assistant."},
                    {"role": "user", "content": QUESTION[tool].format(value) + f" (request {batch}.{index})"},
                ],
            },
            "response": {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": f"c{index}",
                                    "type": "function",
                                    "function": {"name": tool, "arguments": json.dumps({argument: value})},
                                }
                            ],
                        }
                    }
                ],
                "usage": {"prompt_tokens": 120, "completion_tokens": 20},
            },
        }
    )


def write_batch(path: Path, batch: int, counts: dict[str, int]) -> Path:
    path.write_text("".join(call_line(batch, tool, i) + "\n" for tool, n in counts.items() for i in range(n)))
    return path


class Identity:
    def fit_transform(self, matrix):
        return matrix


def tool_embeddings(records):
    """Stand-in for sentence embeddings: one-hot of the called tool, plus a little seeded noise."""
    names = sorted(TOOLS)
    rng = np.random.default_rng(0)
    matrix = np.array([[1.0 if r.response.tool_calls[0].name == n else 0.0 for n in names] for r in records])
    return matrix + rng.normal(0, 0.01, matrix.shape)


def stand_in_finetune(
    base_reference,
    train_records,
    cfg,
    output_dir,
    eval_records=None,
    progress_callback=None,
    checkpoint_dir=None,
    deadline=None,
    clock=None,
):
    output_dir.mkdir(parents=True, exist_ok=True)
    quality = min(1.0, max(cfg.max_steps, 0) / 10)
    (output_dir / "quality.json").write_text(json.dumps({"quality": quality}))
    return FinetuneResult(
        adapter_dir=str(output_dir),
        base_model=base_reference,
        steps=max(cfg.max_steps, 0),
        train_loss=1.0 - quality,
        loss_history=[(1, 1.0 - quality)],
        n_train=len(train_records),
    )


def stand_in_answers(
    reference,
    records,
    max_new_tokens,
    batch_size,
    progress=None,
    adapter_dir=None,
    loaded=None,
    constrain_tool_calls=True,
    with_confidence=False,
):
    """The first quality × n calls answered right, the rest wrong; a base model (no adapter) answers none. No
    confidence features (None): the gate's selective figures are left out."""
    marker = Path(adapter_dir) / "quality.json" if adapter_dir else None
    quality = json.loads(marker.read_text())["quality"] if marker and marker.exists() else 0.0
    right = round(quality * len(records))
    answers = [
        (render_target(r.response) if i < right else "I cannot help with that.", 5.0) for i, r in enumerate(records)
    ]
    return [(*answer, None) for answer in answers] if with_confidence else answers


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_refresh_detects_drift_retrains_and_promotes_only_better_challengers(harness, tmp_path, monkeypatch):

    import tasks.discover
    import tasks.finetune
    import tasks.refresh
    from components.discover.discovery import discover
    from flows.refresh import refresh

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tasks.finetune, "finetune", stand_in_finetune)
    monkeypatch.setattr(tasks.refresh, "generate_answers", stand_in_answers)
    monkeypatch.setattr(
        tasks.discover,
        "discover",
        lambda records, cfg, previous=None, **_: discover(
            records, cfg, embeddings=tool_embeddings(records), reducer=Identity(), previous=previous
        ),
    )
    tiny = build_tiny_model(tmp_path / "tiny")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["anonymize"]["entities"] = ["EMAIL_ADDRESS", "PHONE_NUMBER"]
    params["anonymize"]["curate"]["near_duplicate_threshold"] = None
    params["discover"].update(
        {
            "hdbscan": {"min_cluster_size": 4, "min_samples": 2},
            "test_fraction": 0.3,
            "max_test_per_cluster": 4,
            "min_cluster_size_to_convert": 8,
            "max_clusters_to_convert": 3,
        }
    )
    params["select"].update(candidates=["tiny"], catalog=write_tiny_catalog(tmp_path / "catalog.yaml", tiny))
    params["refresh"]["max_fresh_test_per_cluster"] = 4
    # The gate's mechanics at this scale: the formula model's 40 % counts as "parity" on 4 fresh calls here.
    params["promotion"].update(parity=0.3, min_test_calls=4)
    work, experiment = tmp_path / "work", f"refresh-{uuid.uuid4().hex[:8]}"

    def run(batch: int, counts: dict[str, int], max_steps: int) -> dict:
        params["finetune"]["max_steps"] = max_steps
        params_path = tmp_path / f"params_{batch}.yaml"
        params_path.write_text(yaml.safe_dump(params))
        return refresh(
            params_path=str(params_path),
            workdir=str(work),
            experiment=experiment,
            input_path=str(write_batch(tmp_path / f"batch{batch}.jsonl", batch, counts)),
        )

    # 1: weather and time calls; both clusters are new, trained 4 steps (40 % right): promoted over the base SLM.
    first = run(1, {"get_weather": 14, "get_time": 12}, max_steps=4)
    assert first["drift"]["drifted"] is None and first["drift"]["psi"] is None  # no reference: not measurable
    assert sorted(next(t for t in TOOLS if t in e["label"]) for e in first["clusters"]) == ["get_time", "get_weather"]
    assert all(e["promoted"] for e in first["clusters"]), [e["reason"] for e in first["clusters"]]
    weather = next(e for e in first["clusters"] if "get_weather" in e["label"])["cluster_id"]

    # 2: the mix shifts to currency conversions; the weather cluster grows. A 0-step challenger is not promoted.
    second = run(2, {"get_weather": 10, "get_time": 2, "convert_currency": 16}, max_steps=0)
    assert second["drift"]["mix_drifted"] and second["drift"]["psi"] > params["refresh"]["drift"]["psi_threshold"]
    assert str(weather) in second["retrained"] and "grew" in second["retrained"][str(weather)]
    weather_2 = next(e for e in second["clusters"] if e["cluster_id"] == weather)  # same id after the refit
    assert not weather_2["promoted"] and "beats_champion" in weather_2["reason"]
    assert weather_2["systems"]["champion"]["score"] > weather_2["systems"]["challenger"]["score"]
    assert weather_2["registered_model"]["alias"] == "challenger"

    # 3: more weather calls, a challenger trained 10 steps: it beats the champion and is promoted.
    third = run(3, {"get_weather": 10, "convert_currency": 6}, max_steps=10)
    weather_3 = next(e for e in third["clusters"] if e["cluster_id"] == weather)
    assert weather_3["promoted"], weather_3["reason"]
    assert (
        weather_3["systems"]["challenger"]["regression_score"] >= weather_3["systems"]["champion"]["regression_score"]
    )

    name = weather_3["registered_model"]["name"]
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == weather_3["registered_model"]["version"]
    parents = mlflow.search_runs(
        experiment_names=[experiment], filter_string="tags.`llm2slm.step` = 'refresh'", output_format="list"
    )
    assert len(parents) == 3 and all(run.info.status == "FINISHED" for run in parents)
    latest = max(parents, key=lambda run: run.info.start_time)
    assert latest.data.tags[f"cluster_{weather}.promoted"] == "True"
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id)}
    assert "refresh.json" in artifacts
    # Each refresh's flow run published its decisions as a Markdown artifact, the latest with the promotion.
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": ["llm2slm-refresh"]}}, "sort": "CREATED_DESC", "limit": 10}
    published = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30).json()
    assert len(published) == 3 and "# llm2slm refresh 3" in published[0]["data"]
    [row] = [line for line in published[0]["data"].splitlines() if line.startswith(f"| {weather} |")]
    assert "| yes |" in row and latest.info.run_id in published[0]["data"]
    decisions = [json.loads(line) for line in (work / "reports" / "promotions.jsonl").read_text().splitlines()]
    assert [d["promoted"] for d in decisions if d["cluster_id"] == weather] == [True, False, True]
    assert (work / "reports" / "quality_vs_cost.png").read_bytes()[:4] == b"\x89PNG"

    # Roll-back: champion goes back to the first refresh's version.
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(
        app,
        ["rollback", "--cluster", str(weather), "--workdir", str(work), "--params", str(tmp_path / "params_3.yaml")],
    )
    assert result.exit_code == 0, result.output
    first_version = next(e for e in first["clusters"] if e["cluster_id"] == weather)["registered_model"]["version"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == first_version

    # 4: the router demoted the weather cluster (its audited calls fell below parity: tests/unit/serve/
    # test_audit_and_demotion.py); the next refresh removes its champion alias, retrains it and reports the demotion.
    from components.evaluate.demotion import AuditedFigures, demotion_line
    from components.evaluate.promotion_log import append_promotion_events

    audited = AuditedFigures(20, 10)
    append_promotion_events(
        work / "reports" / "promotions.jsonl", [demotion_line(weather, "on", audited, "below parity")]
    )
    fourth = run(4, {"get_weather": 8, "convert_currency": 4}, max_steps=0)
    [applied] = fourth["demotions"]
    assert (applied["cluster_id"], applied["from_version"], applied["to_version"]) == (weather, first_version, None)
    assert fourth["retrained"][str(weather)].startswith("demoted by the router")
    assert client.get_model_version_by_alias(name, "challenger").version is not None
    assert str(weather) in fourth["coverage"]  # each evaluated cluster's selective figures, refresh by refresh
