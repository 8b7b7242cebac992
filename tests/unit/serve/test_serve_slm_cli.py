"""`llm2slm serve-slm --workdir DIR`: S6's reports/router.yaml names the clusters, the MLflow registry of the work
dir (SQLite, as a run leaves it) holds their champions; promoting a new version and rolling it back reach the
running server through its champion watcher, without a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import openai
import pytest
import yaml
from typer.testing import CliRunner

from components.serve.proxy import PROXY_KEYS_ENV
from tests.support.fake_openai import serve_in_thread
from tests.unit.serve.test_slm_server import KEY, MAX_NEW_TOKENS, make_adapter, weather_request

PREFIX = "llm2slm"  # params evaluate.registered_model_prefix


def cli_app():
    import flows.cli

    return flows.cli.app  # `llm2slm serve-slm` is one of its commands


def write_router_yaml(workdir: Path, base: str, adapter: str) -> None:
    clusters = {
        0: {"mode": "on", "base_model": base, "adapter_dir": adapter, "known_tools": ["get_weather"]},
        1: {"mode": "off", "base_model": base},  # not routed to an SLM: not served
    }
    (workdir / "reports").mkdir(parents=True)
    (workdir / "reports" / "router.yaml").write_text(yaml.safe_dump({"cluster_model_dir": "m", "clusters": clusters}))


def register_version(adapter: str, base: str, promote: bool = True) -> str:
    from tasks.helpers.registry import log_adapter_model, register_challenger

    with mlflow.start_run():
        uri = log_adapter_model("cluster-0", Path(adapter), base, max_new_tokens=MAX_NEW_TOKENS)
    return register_challenger(uri, f"{PREFIX}-cluster-0", {}, promote_reason="test" if promote else None)


def test_serve_slm_serves_the_router_config_and_follows_the_champion_alias(tmp_path, tiny_model_dir, monkeypatch):
    from tasks.helpers.registry import rollback

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(PROXY_KEYS_ENV, f"other-key, {KEY}")
    adapters = [make_adapter(tiny_model_dir, tmp_path / f"adapter{seed}", seed) for seed in (1, 2)]
    workdir = tmp_path / "run"
    write_router_yaml(workdir, tiny_model_dir, adapters[0])
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **_: started.update(app=app, host=host, port=port))

    result = CliRunner().invoke(
        cli_app(), ["serve-slm", "--workdir", str(workdir), "--port", "8799", "--poll-s", "0.2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "serving cluster-0 (champion aliases checked every 0.2 s)" in result.output
    assert started["port"] == 8799 and started["host"] == "127.0.0.1"

    def answer(client) -> dict:
        [call] = client.chat.completions.create(**weather_request("Perth")).choices[0].message.tool_calls
        return json.loads(call.function.arguments)

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)

    with serve_in_thread(started["app"]) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [model.id for model in client.models.list().data] == ["cluster-0"]
        first = answer(client)  # router.yaml's adapter: no champion registered yet
        # The registry is the work dir's own store (the CLI pointed MLflow at it).
        assert mlflow.get_tracking_uri() == f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
        register_version(adapters[1], tiny_model_dir)  # v1 promoted: the other adapter
        wait_for(lambda: "/v1/" in client.models.list().data[0].model_extra["root"])
        promoted_root = client.models.list().data[0].model_extra["root"]
        assert promoted_root.startswith(str((workdir / "models" / "serving" / f"{PREFIX}-cluster-0").resolve()))
        second = answer(client)
        assert second != first  # the promoted adapter answers (the two adapters differ on this call)

        register_version(adapters[0], tiny_model_dir)  # v2: back to the first adapter's weights
        wait_for(lambda: "/v2/" in client.models.list().data[0].model_extra["root"])
        assert answer(client) == first
        rollback(f"{PREFIX}-cluster-0")  # champion back to v1
        wait_for(lambda: client.models.list().data[0].model_extra["root"] == promoted_root)
        assert answer(client) == second


def test_serve_slm_refuses_without_keys_or_clusters(tmp_path, monkeypatch):
    monkeypatch.delenv(PROXY_KEYS_ENV, raising=False)
    result = CliRunner().invoke(cli_app(), ["serve-slm", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and PROXY_KEYS_ENV in result.output
    monkeypatch.setenv(PROXY_KEYS_ENV, KEY)
    result = CliRunner().invoke(cli_app(), ["serve-slm", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "router.yaml" in result.output and "--adapter" in result.output
    result = CliRunner().invoke(cli_app(), ["serve-slm", "--workdir", str(tmp_path), "--adapter", "3=x"])
    assert result.exit_code != 0 and "--base-model" in result.output


@pytest.mark.parametrize("pair", ["x=folder", "folder"])
def test_named_adapters_must_be_cluster_equals_folder(pair):
    import typer

    from flows.cli_serve import parse_adapters

    with pytest.raises(typer.BadParameter, match="CLUSTER=FOLDER"):
        parse_adapters([pair], "base")
    assert parse_adapters(["3=a", "4="], "base") == {3: ("base", "a"), 4: ("base", None)}
