"""Latency the logging proxy adds: 8 concurrent clients call the fake OpenAI-compatible upstream directly, then
through the proxy (client-key check, forwarding, Fernet encryption + fsync'd append of every call), over real
HTTP on 127.0.0.1. Prints p50/p95 per request and requests/s for both, and the added p50/p95 (target < 5 ms p50).

Each server runs in its own process (uvicorn), so the load generator does not share their interpreter.

    python benchmarks/proxy_overhead.py [--requests 400] [--concurrency 8] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.fake_openai, when run as a script from anywhere
CLIENT_KEY = "sk-bench-client"
BODY = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "Weather in Paris?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
}

UPSTREAM = (
    "from tests.support.fake_openai import fake_openai_app; import uvicorn, sys; "
    "uvicorn.run(fake_openai_app(), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning', "
    "access_log=False)"
)
PROXY = (
    "from components.serve.proxy import create_app; from components.collect.ingest import CollectConfig; "
    "from pathlib import Path; import uvicorn, sys; "
    "app = create_app(sys.argv[2], Path(sys.argv[3]), CollectConfig(), ['" + CLIENT_KEY + "']); "
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning', access_log=False)"
)


def start(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env)


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


async def load(base_url: str, requests: int, concurrency: int, stream: bool) -> tuple[list[float], float]:
    body = {**BODY, "stream": stream}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=30, headers={"authorization": f"Bearer {CLIENT_KEY}"}
    ) as client:

        async def one() -> None:
            started = time.perf_counter()
            answer = await client.post("/chat/completions", json=body)
            answer.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        for _ in range(2 * concurrency):  # warm-up: connections, first-call imports
            await one()
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def cpu_seconds(process: subprocess.Popen) -> float:
    """User + system CPU time a server process has used so far (Linux /proc): a figure that, unlike wall-clock
    latency, does not depend on how busy the machine's other processes keep the cores."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()

    from tests.support.fake_openai import free_port

    store = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    os.environ.setdefault("LLM2SLM_STORE_KEY_FILE", str(store / "key" / "store.key"))
    upstream_port, proxy_port = free_port(), free_port()
    upstream_url, proxy_url = f"http://127.0.0.1:{upstream_port}/v1", f"http://127.0.0.1:{proxy_port}/v1"
    processes = [start(UPSTREAM, str(upstream_port))]
    processes.append(start(PROXY, str(proxy_port), upstream_url, str(store / "calls")))
    try:
        wait_ready(f"{upstream_url}/models", processes[0])
        wait_ready(f"http://127.0.0.1:{proxy_port}/healthz", processes[1])
        results = {}
        for name, url in (("direct", upstream_url), ("proxy", proxy_url), ("direct again", upstream_url)):
            cpu_before = [cpu_seconds(process) for process in processes]
            latencies, seconds = asyncio.run(load(url, args.requests, args.concurrency, args.stream))
            cpu = [
                (cpu_seconds(p) - before) * 1000 / (len(latencies) + 2 * args.concurrency)
                for p, before in zip(processes, cpu_before)
            ]
            results[name] = latencies
            print(
                f"{name:>13}: p50 {percentile(latencies, 50):7.2f} ms  p95 {percentile(latencies, 95):7.2f} ms  "
                f"{len(latencies) / seconds:7.1f} req/s  ({len(latencies)} requests, {args.concurrency} clients, "
                f"{'stream' if args.stream else 'non-stream'}); CPU per request: upstream {cpu[0]:.2f} ms, "
                f"proxy {cpu[1]:.2f} ms"
            )
        direct = results["direct"] + results["direct again"]
        print(
            f"added by the proxy: p50 {percentile(results['proxy'], 50) - percentile(direct, 50):+.2f} ms, "
            f"p95 {percentile(results['proxy'], 95) - percentile(direct, 95):+.2f} ms"
        )
        stored = sum(len(path.read_bytes().splitlines()) for path in (store / "calls").glob("calls-*.jsonl"))
        print(f"calls recorded (encrypted, fsync'd): {stored}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
