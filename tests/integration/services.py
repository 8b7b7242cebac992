"""Start the team topology of infra/topology.yaml from packages on 127.0.0.1, without Docker.

Each server is one process group started by :class:`Server`, stopped by its PID (SIGTERM to the group, SIGKILL
after a grace period). Commands and environment names come from infra/topology.yaml, so what runs here is what
infra/docker-compose.yml runs; only the values (free local ports, throwaway credentials) differ.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.core.assets import cache_dir

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_FILE = ROOT / "infra" / "topology.yaml"
BIN = Path(sys.executable).parent
# Throwaway values for the native run only; the real ones come from infra/.env (never committed).
DB_USER, DB_PASSWORD = "llm2slm", "integration-only"
S3_KEY, S3_SECRET = "integration-key", "integration-secret"


def load_topology() -> dict:
    return yaml.safe_load(TOPOLOGY_FILE.read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def native_argv(spec: dict, port: int) -> list[str]:
    """The service's command as run here: `native_command` where the topology names one, else `command`."""
    argv = [str(part).format(port=port) for part in spec.get("native_command", spec["command"])]
    executable = BIN / argv[0]
    return [str(executable) if executable.exists() else argv[0], *argv[1:]]


@dataclass
class Server:
    """One server process (and its children) in its own process group, with its log in `log_path`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    healthy: Callable[[], bool]
    user: str | None = None
    # Postgres: SIGINT is its "fast" shutdown (SIGTERM waits for every client, e.g. the servers' pools, to leave).
    stop_signal: signal.Signals = signal.SIGTERM
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 180) -> Server:
        return self.launch().wait_healthy(timeout_s)

    def launch(self) -> Server:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=self.user,
            cwd=self.log_path.parent,
        )
        log.close()
        return self

    def wait_healthy(self, timeout_s: float = 180) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.name} not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 20) -> None:
        """`stop_signal` to the process group led by our PID, SIGKILL after `grace_s`; idempotent."""
        if self.process is None:
            return
        for sig, wait_s in ((self.stop_signal, grace_s), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children that outlived the leader still carry its group id.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    return check


def postgres_bin(tool: str) -> str:
    """Debian installs the server under /usr/lib/postgresql/<major>/bin, off PATH."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    if not candidates:
        raise FileNotFoundError(f"{tool} not found: install Debian's postgresql package (.ci/run does)")
    return str(candidates[-1])


@dataclass
class Topology:
    """The running servers and how to reach them."""

    base: Path
    ports: dict[str, int]
    servers: dict[str, Server] = field(default_factory=dict)
    topology: dict = field(default_factory=load_topology)

    # -- URLs and environments, keyed by the environment names of infra/topology.yaml -------------------------
    def db_url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.ports['postgres']}/{database}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['object-store']}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect-server']}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow-server']}"

    def query(self, database: str, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of one SQL query on a database of the topology's Postgres (what the servers stored)."""
        import psycopg2

        with psycopg2.connect(self.db_url(database)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()

    def native_values(self) -> dict[str, str]:
        """The value of every environment name a service of the topology reads, for this native run."""
        return {
            "POSTGRES_USER": DB_USER,
            "POSTGRES_PASSWORD": DB_PASSWORD,
            "POSTGRES_DB": "prefect",
            "MINIO_ROOT_USER": S3_KEY,
            "MINIO_ROOT_PASSWORD": S3_SECRET,
            "S3_ACCESS_KEY_ID": S3_KEY,
            "S3_SECRET_ACCESS_KEY": S3_SECRET,
            "PREFECT_API_DATABASE_CONNECTION_URL": self.db_url("prefect", "postgresql+asyncpg"),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.ports["prefect-server"]),
            "PREFECT_UI_API_URL": self.prefect_api_url,
            "MLFLOW_BACKEND_STORE_URI": self.db_url("mlflow", "postgresql+psycopg2"),
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/artifacts",
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(self.ports["mlflow-server"]),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{self.ports['mlflow-server']},localhost:*",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ENDPOINT_URL_S3": self.s3_url,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
            "LLM2SLM_CACHE": str(cache_dir()),
            "HF_HUB_OFFLINE": "1",
            "NVIDIA_VISIBLE_DEVICES": "none",  # the GPU worker is not started here
        }

    def service_env(self, name: str) -> dict[str, str]:
        """Process environment for a service: a clean base plus exactly the names the topology lists for it."""
        values = self.native_values()
        env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "TMPDIR") if key in os.environ}
        env.update(
            PREFECT_HOME=str(self.base / "prefect-home"),
            HOME=str(self.base / "home"),
            PYTHONPATH=str(ROOT),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            PREFECT_API_DATABASE_MIGRATE_ON_START="true",
            AWS_DEFAULT_REGION="us-east-1",
        )
        env.update({key: values[key] for key in self.topology["services"][name].get("environment", [])})
        return env

    # -- servers ---------------------------------------------------------------------------------------------
    def start_postgres(self) -> Server:
        data = self.base / "postgres"
        user = None
        if os.geteuid() == 0:  # postgres refuses to run as root: run it as the package's `postgres` user
            user = "postgres"
            pwd.getpwnam(user)
        if not (data / "PG_VERSION").exists():
            data.mkdir(mode=0o700, exist_ok=True)
            password_file = self.base / "pgpass-init"
            password_file.write_text(DB_PASSWORD)
            if user:
                shutil.chown(data, user)
                shutil.chown(password_file, user)
            subprocess.run(
                [
                    postgres_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    DB_USER,
                    "--auth=scram-sha-256",
                    f"--pwfile={password_file}",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                user=user,
                cwd=self.base,
            )
            password_file.unlink()
        port = self.ports["postgres"]
        server = Server(
            "postgres",
            [
                postgres_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={data}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            self.service_env("postgres"),
            self.base / "postgres.log",
            self._postgres_ready,
            user=user,
            stop_signal=signal.SIGINT,
        )
        self.servers["postgres"] = server.start()
        self._create_databases()
        return server

    def _postgres_ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.db_url("postgres"), connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def _create_databases(self) -> None:
        import psycopg2

        connection = psycopg2.connect(self.db_url("postgres"))
        connection.autocommit = True
        with connection.cursor() as cursor:
            for database in self.topology["databases"]:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{database}"')
        connection.close()

    def start_object_store(self) -> Server:
        spec = self.topology["services"]["object-store"]
        server = Server(
            "object-store",
            native_argv(spec, self.ports["object-store"]),
            self.service_env("object-store"),
            self.base / "object-store.log",
            http_ok(f"{self.s3_url}/moto-api/"),
        )
        self.servers["object-store"] = server.start()
        s3 = self.s3_client()
        for bucket in self.topology["buckets"]:
            s3.create_bucket(Bucket=bucket)
        return server

    def s3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )

    def launch_http_server(self, name: str) -> Server:
        """Start without waiting: the Prefect and MLflow servers migrate their databases side by side."""
        spec = self.topology["services"][name]
        url = f"http://127.0.0.1:{self.ports[name]}{spec['health']}"
        server = Server(
            name, native_argv(spec, self.ports[name]), self.service_env(name), self.base / f"{name}.log", http_ok(url)
        )
        self.servers[name] = server.launch()
        return server

    def start_worker(self, name: str = "cpu-worker") -> Server:
        spec = self.topology["services"][name]
        pool = spec["command"][spec["command"].index("--pool") + 1]
        server = Server(
            name,
            native_argv(spec, 0),
            self.service_env(name),
            self.base / f"{name}.log",
            lambda: self.worker_online(pool),
        )
        self.servers[name] = server.start(120)
        return server

    def worker_online(self, pool: str) -> bool:
        import json

        request = urllib.request.Request(
            f"{self.prefect_api_url}/work_pools/{pool}/workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return any(w.get("status") == "ONLINE" for w in json.load(response))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop_all(self) -> None:
        for server in reversed(list(self.servers.values())):
            server.stop()


def start_topology(base: Path) -> Topology:
    """Every server of the topology but the GPU worker, started in dependency order."""
    names = ["postgres", "object-store", "prefect-server", "mlflow-server"]
    topology = Topology(base, {name: free_port() for name in names})
    (base / "home").mkdir(exist_ok=True)
    try:
        topology.start_postgres()
        topology.start_object_store()
        for server in [topology.launch_http_server("prefect-server"), topology.launch_http_server("mlflow-server")]:
            server.wait_healthy(300)
        topology.start_worker("cpu-worker")
    except BaseException:
        topology.stop_all()
        raise
    return topology
