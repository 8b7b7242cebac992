"""``llm2slm serve-slm``: the embedded OpenAI-compatible SLM server (components/serve/slm_server.py) for a run, and
``llm2slm export``: a cluster's served adapter as a merged folder, a vLLM bundle or GGUF (components/serve/export.py).

Kept out of flows/cli.py: the commands are a typer sub-app (:data:`serve_app`) that flows/cli.py mounts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import typer

from components.core import artifacts
from flows.cli_errors import exit_on


def client_keys_from_env() -> list[str]:
    """The API keys clients must send, from the environment, never the command line (shell history, ps)."""
    from components.serve.proxy import PROXY_KEYS_ENV

    keys = [key.strip() for key in os.environ.get(PROXY_KEYS_ENV, "").split(",") if key.strip()]
    if not keys:
        raise ValueError(f"set {PROXY_KEYS_ENV} to the comma-separated API keys clients will use")
    return keys


def read_router_config(workdir: Path, router_config: Path | None, evaluate, hint: str):
    """The router config a serving command reads: ``--router-config``, else S6's (where params.yaml puts it)."""
    from components.serve.service import load_router_config

    path = Path(router_config or artifacts.path_of(artifacts.ROUTER_CONFIG, workdir, evaluate.router_config))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no router config ({hint})")
    return load_router_config(path)


def serving_downloads(workdir: Path) -> Path:
    """Where champions downloaded from the registry are kept, one folder per version (never rewritten)."""
    return workdir.resolve() / "models" / "serving"


def parse_adapters(pairs: list[str], base_model: str | None) -> dict[int, tuple[str, str | None]]:
    """``--adapter 3=folder`` (``3=`` for the plain base) -> cluster id -> (base model, adapter folder)."""
    if pairs and base_model is None:
        raise typer.BadParameter("--adapter needs --base-model (the model the adapters were trained on)")
    named = {}
    for pair in pairs:
        cluster, separator, folder = pair.partition("=")
        if not separator or not cluster.strip().lstrip("-").isdigit():
            raise typer.BadParameter(
                f"{pair!r}: expected CLUSTER=FOLDER, e.g. 3=models/cluster-3", param_hint="--adapter"
            )
        named[int(cluster)] = (base_model, folder.strip() or None)
    return named


def build_server(
    workdir: Path,
    poll_s: float,
    router_config: Path | None = None,
    adapters: list[str] | None = None,
    base_model: str | None = None,
    params: Path | None = None,
    watch_registry: bool = True,
    engine=None,
    engine_name: str = "onnxruntime-genai",
    engine_threads: int | None = None,
    max_request_bytes: int | None = None,
):
    """The SLMServer a ``serve-slm`` command line describes (the CLI runs it with uvicorn)."""
    from components.serve.slm_server import (
        ServedAdapter,
        SLMServer,
        SLMServerConfig,
        gates_from_router_config,
        served_from_router_config,
    )
    from flows.steps import default_params_path, load_pipeline_config

    keys = client_keys_from_env()
    config = load_pipeline_config(params or default_params_path())
    select, evaluate = config.steps["select"], config.steps["evaluate"]
    named = parse_adapters(adapters or [], base_model)
    gates = {}  # named adapters have no selective gate
    if named:
        served = {cluster_id: ServedAdapter(*pair) for cluster_id, pair in named.items()}
    else:
        routed = read_router_config(
            workdir, router_config, evaluate, "run S6 evaluate, or name adapters with --adapter"
        )
        served = served_from_router_config(routed)
        gates = gates_from_router_config(routed)
    if not served:
        raise ValueError("no cluster to serve: the router config routes none to an SLM")
    server_config = SLMServerConfig(
        max_new_tokens=evaluate.max_new_tokens,
        max_batch_size=evaluate.batch_size,
        poll_s=poll_s,
        hardware=select.serving_hardware,
        hourly_cost_usd=select.hourly_cost_usd,
        engine=engine_name,
        engine_threads=engine_threads,
        **({"max_request_bytes": max_request_bytes} if max_request_bytes else {}),
    )
    resolver = None
    if watch_registry and poll_s > 0:
        from tasks.helpers.champions import champion_resolver
        from tasks.helpers.tracking import configure_tracking

        configure_tracking(workdir.resolve(), config.tracking)
        resolver = champion_resolver(served, evaluate.registered_model_prefix, serving_downloads(workdir))
    return SLMServer(served, server_config, keys, engine=engine, resolve=resolver, gates=gates)


def export_source(
    workdir: Path, cluster_id: int, params: Path | None = None, router_config: Path | None = None
) -> tuple[object, list]:
    """What ``export`` exports for a cluster, found as ``serve-slm`` finds it: the cluster of the router config
    (S6's reports/router.yaml), upgraded to its registry ``champion`` when one is registered (a registry that
    fails otherwise raises tasks/helpers/champions.py's RegistryError); and the tools its
    training calls offer (for guided decoding), when the run's curated records and splits are there."""
    from components.core.config import resolve
    from components.core.schema import read_records, split_records
    from components.serve.export import cluster_tools
    from components.serve.slm_server import served_from_router_config
    from flows.steps import default_params_path, load_pipeline_config

    config = load_pipeline_config(params or default_params_path())
    evaluate = config.steps["evaluate"]
    served = served_from_router_config(read_router_config(workdir, router_config, evaluate, "run S6 evaluate first"))
    if cluster_id not in served:
        known = ", ".join(str(c) for c in sorted(served)) or "none"
        raise ValueError(f"cluster {cluster_id} is not served by the router config (served: {known})")
    from tasks.helpers.champions import champion_or_router_adapter

    source, fallback = champion_or_router_adapter(
        workdir.resolve(), cluster_id, served[cluster_id], evaluate.registered_model_prefix, serving_downloads(workdir)
    )
    if fallback:
        typer.echo(f"exporting {fallback}", err=True)
    curated, splits = resolve(workdir, evaluate.curated), resolve(workdir, evaluate.splits)
    tools = []
    if Path(curated).exists() and Path(splits).exists():
        import pandas as pd

        records = {record.record_id: record for record in read_records(Path(curated))}
        tools = cluster_tools(split_records(records, pd.read_parquet(splits), cluster_id, "train"))
    return source, tools


def run_export(
    workdir: Path,
    cluster_id: int,
    kind: str,
    out: Path | None,
    params: Path | None = None,
    router_config: Path | None = None,
    llama_cpp: Path | None = None,
    tools_file: Path | None = None,
) -> Path:
    """The ``export`` command without typer: the folder it wrote."""
    import json

    from components.serve import export

    source, tools = export_source(workdir, cluster_id, params, router_config)
    if tools_file is not None:
        tools = json.loads(tools_file.read_text())
    out = out or workdir / "exports" / f"cluster-{cluster_id}" / kind
    if kind == "merged":
        return export.export_merged(cluster_id, source.base_model, source.adapter_dir, out, tools)
    if kind == "vllm":
        if source.adapter_dir is None:
            raise ValueError(f"cluster {cluster_id} is served by the plain base: there is no adapter to bundle")
        return export.export_vllm(cluster_id, source.base_model, source.adapter_dir, out, tools)
    if kind == "gguf":
        return export.export_gguf(cluster_id, source.base_model, source.adapter_dir, out, tools, llama_cpp)
    raise ValueError(f"unknown format {kind!r}: merged, vllm or gguf")


@dataclass(frozen=True)
class ProxyOptions:
    """The `proxy` command's listening and upstream options."""

    upstream_url: str
    store: Path
    host: str
    port: int
    agent: str
    upstream_api_key_env: str
    anonymize: bool
    timeout_s: float
    max_body_mib: float


def start_proxy(options: ProxyOptions, client_keys: list[str], route: Path | None, params: Path | None, workdir: Path):
    """Check the store key, build S2's anonymizer and the router when asked, and serve until stopped."""
    from components.collect.sources.proxy_store import check_store_key
    from components.core.secure_store import KeyFilePermissionError, StoreKeyError, load_key
    from components.serve.proxy import serve
    from flows.steps import default_params_path, load_pipeline_config

    config = load_pipeline_config(params or default_params_path())
    collect_cfg = config.steps["collect"]
    with exit_on(StoreKeyError, KeyFilePermissionError):
        # Fails now, not on the first call, if the store key is malformed or is not the store's key.
        load_key()
        if options.store.is_dir():
            check_store_key(options.store, collect_cfg)
    on_write = None
    if options.anonymize:
        from components.curate.anonymize import build_anonymizer

        # S2's anonymizer with its deny list (a relative deny_list_file is read from --workdir, as in `run`).
        anonymizer = build_anonymizer(config.steps["anonymize"], workdir)
        on_write = lambda record: anonymizer.anonymize_record(record)[0]  # noqa: E731
    responders = []
    if route is not None:
        from components.serve.service import RouterResponder, load_router_config

        with exit_on(FileNotFoundError, ValueError, prefix="error: router: "):  # no cluster model, a bad config
            router = RouterResponder(load_router_config(route))
        responders.append(router)
        modes = ", ".join(f"#{cid} {c.mode}" for cid, c in router.config.clusters.items()) or "no cluster routed"
        typer.echo(f"router: {modes}")
    typer.echo(
        f"logging proxy: http://{options.host}:{options.port}/v1 -> {options.upstream_url}, encrypted calls -> {options.store}"
    )
    serve(
        options.host,
        options.port,
        options.upstream_url,
        options.store,
        collect_cfg,
        client_keys,
        agent=options.agent,
        upstream_api_key=os.environ.get(options.upstream_api_key_env) or None,
        timeout_s=options.timeout_s,
        on_write=on_write,
        responders=responders,
        max_body_bytes=int(options.max_body_mib * 1024 * 1024),
    )


# The serving commands (`export`, `serve-slm`, `proxy`), mounted on the `llm2slm` app by flows/cli.py.
serve_app = typer.Typer()


@serve_app.command("export")
def export_command(
    cluster: int = typer.Option(..., "--cluster", help="The cluster whose served adapter to export"),
    kind: str = typer.Option(..., "--format", help="merged | vllm | gguf"),
    workdir: Path = typer.Option(Path("."), "--workdir", help="The run (its reports/router.yaml, registry)"),
    out: Path | None = typer.Option(None, "--out", help="Folder to write (default WORKDIR/exports/cluster-N/FORMAT)"),
    llama_cpp: Path | None = typer.Option(
        None, "--llama-cpp", help="llama.cpp tree with convert_hf_to_gguf.py (gguf; or $LLM2SLM_LLAMA_CPP_DIR)"
    ),
    tools: Path | None = typer.Option(None, "--tools", help="JSON list of OpenAI tools (default: the run's)"),
    router_config: Path | None = typer.Option(None, "--router-config", help="Default WORKDIR/reports/router.yaml"),
    params: Path | None = typer.Option(None, "--params", help="params.yaml (default: ./params.yaml, else packaged)"),
) -> None:
    """Export a cluster's served SLM with its tool calling kept: a merged HF folder, a vLLM multi-LoRA bundle,
    or GGUF with an Ollama Modelfile (docs/serving.md)."""
    from tasks.helpers.champions import RegistryError

    with exit_on(FileNotFoundError, ValueError, RegistryError):
        folder = run_export(workdir, cluster, kind, out, params, router_config, llama_cpp, tools)
    typer.echo(f"cluster-{cluster} exported as {kind}: {folder}")


@serve_app.command("serve-slm")
def serve_slm(
    workdir: Path = typer.Option(Path("."), "--workdir", help="The run whose promoted adapters to serve"),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
    port: int = typer.Option(8788, "--port"),
    poll_s: float = typer.Option(
        30.0, "--poll-s", help="Seconds between checks of each cluster's `champion` alias (0: no hot reload)"
    ),
    router_config: Path | None = typer.Option(
        None, "--router-config", help="Clusters to serve (default: WORKDIR/reports/router.yaml, S6's output)"
    ),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="CLUSTER=FOLDER to serve instead of the router config (repeatable)"
    ),
    base_model: str | None = typer.Option(None, "--base-model", help="Base model of the --adapter folders"),
    params: Path | None = typer.Option(None, "--params", help="params.yaml (default: ./params.yaml, else packaged)"),
    engine: str = typer.Option(
        "onnxruntime-genai",
        "--engine",
        help="onnxruntime-genai (default; eager answers what it cannot load) | transformers (eager) | "
        "llama-cpp (the llama-cpp extra)",
    ),
    threads: int | None = typer.Option(None, "--threads", help="the engine's CPU threads (default: every core)"),
    max_request_bytes: int | None = typer.Option(
        None, "--max-request-bytes", min=1, help="Larger request bodies get 413 (default 8 MiB)"
    ),
) -> None:
    """Serve a run's SLMs as an OpenAI-compatible API: `model` = cluster-<id>, tools answered under each
    cluster's grammar; keys from $LLM2SLM_PROXY_KEYS; /metrics, /healthz, /v1/engine."""
    import uvicorn

    with exit_on(FileNotFoundError, ValueError, RuntimeError):
        server = build_server(
            workdir,
            poll_s,
            router_config,
            adapter,
            base_model,
            params,
            engine_name=engine,
            engine_threads=threads,
            max_request_bytes=max_request_bytes,
        )
    models = ", ".join(f"cluster-{cluster_id}" for cluster_id in sorted(server.served))
    reload = f"champion aliases checked every {poll_s:g} s" if server.resolve else "no hot reload"
    typer.echo(f"SLM server: http://{host}:{port}/v1 serving {models} ({reload})")
    uvicorn.run(server.app, host=host, port=port, log_level="info")


@serve_app.command()
def proxy(
    upstream_url: str = typer.Option(
        ..., "--upstream-url", help="OpenAI-compatible base URL of the real LLM, including /v1"
    ),
    store: Path = typer.Option(..., "--store", help="Directory of the encrypted calls-YYYYMMDD.jsonl logs"),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on"),
    port: int = typer.Option(8787, "--port"),
    agent: str = typer.Option("default", "--agent", help="Agent name when the request has no X-Agent-Name header"),
    upstream_api_key_env: str = typer.Option(
        "LLM2SLM_UPSTREAM_API_KEY",
        "--upstream-api-key-env",
        help="Environment variable holding the upstream API key (none is sent when it is unset)",
    ),
    anonymize: bool = typer.Option(
        False,
        "--anonymize",
        help="Pseudonymize each call with S2's analyzer "
        "(params anonymize.*) before it is written: raw PII never touches disk",
    ),
    timeout_s: float = typer.Option(120.0, "--timeout-s", help="Upstream request timeout in seconds"),
    max_body_mib: float = typer.Option(
        8.0, "--max-body-mib", help="Largest request body accepted, in MiB (a larger one is answered 413)"
    ),
    route: Path | None = typer.Option(
        None,
        "--route",
        help="S6 router config (YAML: per-cluster mode, "
        "base model, adapter, canary share, known tools; or a params file "
        "with a `route` section): answer routed clusters with their SLMs",
    ),
    params: Path | None = typer.Option(None, "--params", help="params.yaml (default: ./params.yaml, else packaged)"),
    workdir: Path = typer.Option(Path("."), "--workdir", help="Where S2's deny list is read from (as in `run`)"),
) -> None:
    """S1 live: OpenAI-compatible logging proxy; point the agent's base_url at it, then
    `collect --source proxy-store:DIR`. With --route it is also the S6 router. Client keys: $LLM2SLM_PROXY_KEYS
    (comma-separated); store key: $LLM2SLM_STORE_KEY or the key file."""
    with exit_on(ValueError):
        keys = client_keys_from_env()
    start_proxy(
        ProxyOptions(upstream_url, store, host, port, agent, upstream_api_key_env, anonymize, timeout_s, max_body_mib),
        keys,
        route,
        params,
        workdir,
    )
