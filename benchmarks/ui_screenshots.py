"""Screenshots of where a conversion's users look, from a work directory an `llm2slm run` wrote: the MLflow
evaluate run's Traces tab (one trace per held-out call, with its assessments) and the Prefect flow run's Markdown
artifact (headline, per-cluster table, the MLflow run). It starts `mlflow server` on the work dir's store and a
Prefect server on the Prefect home the run used (its `prefect.db`), both on 127.0.0.1, and shoots each page with
headless Chromium (Debian: `apt-get install chromium`).

    PREFECT_HOME=/tmp/run/prefect-home llm2slm run --input log.jsonl --workdir /tmp/run/work
    python benchmarks/ui_screenshots.py --workdir /tmp/run/work --prefect-home /tmp/run/prefect-home

writes docs/img/mlflow_traces.png and docs/img/prefect_artifact.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@contextmanager
def server(command: list[str], health: str, env: dict[str, str] | None = None, timeout: float = 180.0):
    """A server process for the block's length, once ``health`` answers 200."""
    log = tempfile.NamedTemporaryFile(prefix="ui-server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(health, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not come up: see {log.name}")
            time.sleep(1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def screenshot(url: str, path: Path, wait_ms: int, size: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium: apt-get install -y chromium")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={path}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    print(f"{url} -> {path}")


def evaluate_run(mlflow_url: str) -> tuple[str, str]:
    """(experiment id, run id) of the latest evaluate run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`llm2slm.step` = 'evaluate'", order_by=["start_time DESC"])
    if not runs:
        raise SystemExit("no evaluate run in this work dir's MLflow store")
    return runs[0].info.experiment_id, runs[0].info.run_id


def conversion_artifact(prefect_api: str) -> str:
    """The id of the latest `llm2slm-conversion` artifact."""
    body = {"artifacts": {"key": {"any_": ["llm2slm-conversion"]}}, "sort": "CREATED_DESC", "limit": 1}
    found = httpx.post(f"{prefect_api}/artifacts/filter", json=body, timeout=30).raise_for_status().json()
    if not found:
        raise SystemExit("no llm2slm-conversion artifact in this Prefect home's database")
    return found[0]["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--prefect-home", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--mlflow-port", type=int, default=5055)
    parser.add_argument("--prefect-port", type=int, default=4255)
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time each page gets to render")
    parser.add_argument("--size", default="1920,1000")
    args = parser.parse_args()
    store = f"sqlite:///{(args.workdir / 'mlflow.db').resolve()}"
    mlflow_url = f"http://127.0.0.1:{args.mlflow_port}"
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", store, "--host", "127.0.0.1"]
    mlflow_cmd += ["--port", str(args.mlflow_port), "--workers", "1"]
    with server(mlflow_cmd, f"{mlflow_url}/health"):
        experiment_id, run_id = evaluate_run(mlflow_url)
        screenshot(
            f"{mlflow_url}/#/experiments/{experiment_id}/runs/{run_id}/traces",
            args.out / "mlflow_traces.png",
            args.wait_ms,
            args.size,
        )
    prefect_url = f"http://127.0.0.1:{args.prefect_port}"
    prefect_env = {"PREFECT_HOME": str(args.prefect_home.resolve()), "PREFECT_UI_API_URL": f"{prefect_url}/api"}
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(args.prefect_port)]
    with server(prefect_cmd, f"{prefect_url}/api/health", prefect_env):
        artifact_id = conversion_artifact(f"{prefect_url}/api")
        screenshot(
            f"{prefect_url}/artifacts/artifact/{artifact_id}",
            args.out / "prefect_artifact.png",
            args.wait_ms,
            args.size,
        )


if __name__ == "__main__":
    main()
